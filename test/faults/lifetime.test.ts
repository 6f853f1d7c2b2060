/**
 * Fault 8 (prevention): maxLifetimeMs renews connections over time with no failed request, and
 * the jitter spreads the renewals out instead of reconnecting the whole pool at once.
 */
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { burst, serve, summary, type Outcome } from '../helpers/fault.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)

const LIFETIME = 400
const JITTER = 0.5

t.test('a pool opened at once is not renewed at once', async (t) => {
  const app = await buildApp(t, db, { max: 10, maxLifetimeMs: LIFETIME, maxLifetimeJitter: JITTER })
  const opened = performance.now() // before any connection (and its lifetime timer) starts
  const clients = await Promise.all(Array.from({ length: 10 }, () => app.pg.pool.connect()))
  // Every lifetime timer started by now (they start when a connection is open): on a loaded
  // machine the connects themselves take a while, which must not count against the bound.
  const connected = performance.now() - opened
  for (const c of clients) c.release()
  // Idle connections are closed by their own lifetime timers: record when each one goes.
  const closedAt: number[] = []
  let total = app.pg.stats().total
  while (total > 0 && performance.now() - opened < LIFETIME * 3) {
    await new Promise((resolve) => setTimeout(resolve, 2))
    const now = app.pg.stats().total
    for (let i = now; i < total; i++) closedAt.push(performance.now() - opened)
    total = now
  }
  const spread = Math.max(...closedAt) - Math.min(...closedAt)
  t.comment(`lifetime: 10 connections opened together closed between ${Math.round(Math.min(...closedAt))} and ${Math.round(Math.max(...closedAt))} ms`)
  t.equal(closedAt.length, 10, 'all reached their lifetime')
  t.ok(Math.min(...closedAt) >= LIFETIME * (1 - JITTER) - 2, 'none before the shortest jittered lifetime')
  t.ok(Math.max(...closedAt) <= connected + LIFETIME + 250, `none long after maxLifetimeMs (all open ${Math.round(connected)} ms after the start)`)
  t.ok(spread >= LIFETIME * JITTER * 0.25, `spread over ${Math.round(spread)} ms of the ${LIFETIME * JITTER} ms jitter window`)
})

t.test('renewed under load with no failed request', async (t) => {
  const app = await buildApp(t, db, { max: 10, maxLifetimeMs: LIFETIME, maxLifetimeJitter: JITTER })
  const request = await serve(app)
  const outcomes: Outcome[] = []
  const pidsSeen = (): number => new Set(outcomes.map((o) => o.body.pid)).size
  // At least 2.5 lifetimes of load, and on until renewals show (a loaded machine serves fewer
  // bursts in that time), within a bound.
  const start = performance.now()
  while (performance.now() - start < LIFETIME * 2.5 || (pidsSeen() <= 10 && performance.now() - start < 15_000)) {
    outcomes.push(...await burst(() => request(), 20, 10))
  }
  const result = summary(outcomes)
  const pids = new Set(outcomes.map((o) => o.body.pid))
  t.comment(`lifetime under load: ${JSON.stringify(result)}, ${pids.size} connections`)
  t.equal(result.failed, 0, 'no failed request')
  t.ok(pids.size > 10, 'connections were renewed')
})
