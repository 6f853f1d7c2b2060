/**
 * Reproduces (second adversarial pass): a library that never calls `release()` on a
 * `request.db.pool` client (drizzle sends its BEGIN outside its try/finally: a BEGIN that fails,
 * here in an aborted transaction, leaks its client) left every later statement of that library
 * waiting for a turn forever; the handler hung until its client gave up.
 * Now: a turn is waited for no longer than a checkout (`acquireTimeoutMs`), then fails with a
 * coded 503.
 */
import t from 'tap'
import { drizzle } from 'drizzle-orm/node-postgres'
import { sql as dsql } from 'drizzle-orm'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)

for (const route of [false, true]) {
  t.test(`drizzle's BEGIN fails and leaks its turn (route transaction: ${route}): the next statement fails with FST_PG_ACQUIRE_TIMEOUT within acquireTimeoutMs`, async (t) => {
    const app = await buildApp(t, db, { max: 1, acquireTimeoutMs: 300 })
    let seen: { begin?: string, next?: string, ms?: number } = {}
    app.get('/', { config: { pgPool: { transaction: route } } }, async (req) => {
      const d = drizzle(req.db.pool)
      if (!route) await req.db.query('begin')
      await req.db.query('select 1/0').catch(() => {})
      const begin = await d.transaction(async (tx) => { await tx.execute(dsql`select 1`) }).then(() => 'ok', (e: { cause?: { code?: string } }) => e.cause?.code)
      if (!route) await req.db.query('rollback')
      const started = Date.now()
      const next = await d.execute(dsql`select 2::int as two`).then(() => 'ran', (e: { cause?: { code?: string }, code?: string }) => e.cause?.code ?? e.code)
      seen = { begin, next, ms: Date.now() - started }
      return seen
    })
    // (With the route's transaction aborted by the failed statement, the reply is its 500.)
    await app.inject('/')
    const { begin, next, ms = 0 } = seen
    t.equal(begin, '25P02', "drizzle's BEGIN failed in the aborted transaction")
    t.equal(next, 'FST_PG_ACQUIRE_TIMEOUT')
    t.ok(ms >= 250 && ms < 1500, `within acquireTimeoutMs (${ms} ms)`)
    t.equal(app.pg.stats().active, 0, 'the connection still went back')
  })
}
