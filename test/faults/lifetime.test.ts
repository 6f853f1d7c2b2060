/**
 * Fault 8 (prevention): maxLifetimeMs renews connections over time, under load, with no failed
 * request, and the jitter spreads the renewals out instead of reconnecting the pool at once.
 */
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { burst, summary } from '../helpers/fault.js'
import { setupDatabase } from '../helpers/postgres.js'
import { listen } from '../helpers/util.js'

const db = await setupDatabase(t)

const LIFETIME = 400

t.test('short lifetime under load: renewed, spread out, no failure', async (t) => {
  const app = await buildApp(t, db, { max: 10, maxLifetimeMs: LIFETIME, maxLifetimeJitter: 0.5 })
  app.get('/q', async (req) => (await req.db.query(
    'select pg_backend_pid() as pid, extract(epoch from backend_start) * 1000 as started from pg_stat_activity where pid = pg_backend_pid()')).rows[0])
  const base = await listen(app)
  const request = async () => {
    const start = performance.now()
    const res = await fetch(base + '/q')
    return { status: res.status, ms: performance.now() - start, body: await res.json() }
  }
  const outcomes = []
  const until = performance.now() + LIFETIME * 2.5
  while (performance.now() < until) outcomes.push(...await burst(request, 20, 10))
  const result = summary(outcomes)
  const connections = new Map<number, number>()
  for (const o of outcomes) connections.set(o.body.pid, Number(o.body.started))
  const starts = [...connections.values()].sort((x, y) => x - y)
  const first = starts[0]!
  // The first generation opened together; their replacements are the connections opened
  // between half a lifetime (the shortest jittered lifetime) and one and a half lifetimes later.
  const renewals = starts.filter((s) => s - first >= LIFETIME / 2 - 20 && s - first < LIFETIME * 1.5)
  const spread = (renewals.at(-1) ?? 0) - (renewals[0] ?? 0)
  t.comment(`lifetime: ${JSON.stringify(result)}, ${connections.size} connections, first renewals spread over ${Math.round(spread)} ms`)
  t.equal(result.failed, 0, 'no failed request')
  t.ok(connections.size > 10, 'connections were renewed')
  t.ok(renewals.length >= 5, `${renewals.length} renewals in the first lifetime window`)
  t.ok(spread >= LIFETIME * 0.5 * 0.25, 'renewals are spread over the jitter window, not simultaneous')
})
