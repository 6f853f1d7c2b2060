/**
 * app.close() drains: it waits for checked-out connections up to closeTimeoutMs, then destroys
 * them; waiting checkouts fail with FST_PG_POOL_CLOSED; it never hangs.
 */
import Fastify from 'fastify'
import t from 'tap'
import pgPool from '../src/index.js'
import { appBackends } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, listen, send, until } from './helpers/util.js'

const db = await setupDatabase(t)

async function build (options: object = {}) {
  const app = Fastify()
  await app.register(pgPool, { connectionString: db.url, application_name: 'fpp-app', ...options })
  return app
}

t.test('close waits for a checked-out connection, then ends the pool', async (t) => {
  const app = await build()
  const holding = deferred()
  const release = deferred()
  app.get('/', async (req) => {
    await req.db.query('select 1')
    holding.resolve()
    await release.promise
    return (await req.db.query('select 2 as n')).rows[0]
  })
  const url = await listen(app)
  const sent = send(url)
  await holding.promise
  let closed = false
  const closing = app.close().then(() => { closed = true })
  await until(() => app.pg.stats().idle === 0, 'close has started')
  t.notOk(closed, 'close waits while the request holds its connection')
  release.resolve()
  const res = await sent.done
  t.same(res, { status: 200, headers: (res as { headers: object }).headers, body: '{"n":2}' }, 'the request finished normally')
  await closing
  t.has(app.pg.stats(), { total: 0, idle: 0, active: 0, waiting: 0 })
  await until(async () => (await appBackends(db)).length === 0, 'the server sees no app connection')
})

t.test('closeTimeoutMs after close began, a connection still held is destroyed and waiters fail', async (t) => {
  const app = await build({ max: 1, closeTimeoutMs: 200, acquireTimeoutMs: 10_000 })
  const LOCK = 7
  await db.admin('select pg_advisory_lock($1)', [LOCK])
  const holding = deferred()
  const handlerError = deferred<unknown>()
  app.get('/', async (req) => {
    await req.db.query('select 1') // checked out
    const pending = req.db.query('select pg_advisory_xact_lock($1)', [LOCK])
    holding.resolve()
    try {
      await pending
    } catch (error) {
      handlerError.resolve(error)
    }
    return 'done'
  })
  const url = await listen(app)
  const sent = send(url)
  await holding.promise
  const waiting = t.rejects(app.pg.query('select 1'), { code: 'FST_PG_POOL_CLOSED', statusCode: 503 }, 'the waiting checkout fails')
  await until(() => app.pg.stats().waiting === 1, 'a checkout waits')
  const start = performance.now()
  await app.close()
  const ms = performance.now() - start
  t.ok(ms >= 195 && ms < 2000, `close gave up after closeTimeoutMs (${Math.round(ms)} ms)`)
  t.match(await handlerError.promise, { code: 'FST_PG_CANCELLED', statusCode: 503, cause: { code: '57014' } }, 'the running statement was cancelled')
  const { rows } = await db.admin("select count(*)::int as n from pg_stat_activity where application_name = 'fpp-app' and state = 'active'")
  t.equal(rows[0].n, 0, 'no statement of the app runs on the server after close() resolved')
  await waiting
  await t.rejects(app.pg.query('select 1'), { code: 'FST_PG_POOL_CLOSED' }, 'and so does any later checkout')
  t.has(app.pg.stats(), { total: 0, idle: 0, active: 0, waiting: 0 })
  await sent.done
  await db.admin('select pg_advisory_unlock($1)', [LOCK])
  await until(async () => (await appBackends(db)).length === 0, 'the server sees no app connection')
})

t.test('a request still being served during close may check out until the deadline', async (t) => {
  const app = await build({ closeTimeoutMs: 5000 })
  const started = deferred()
  const proceed = deferred()
  app.get('/', async (req) => {
    started.resolve()
    await proceed.promise
    return (await req.db.query('select 3 as n')).rows[0]
  })
  const url = await listen(app)
  const sent = send(url)
  await started.promise
  const closing = app.close()
  proceed.resolve()
  const res = await sent.done
  t.equal((res as { body: string }).body, '{"n":3}', 'its first query, sent during close, ran')
  await closing
  t.has(app.pg.stats(), { total: 0, idle: 0, active: 0, waiting: 0 })
})

t.test('close with nothing checked out is immediate, and twice is fine', async (t) => {
  const app = await build()
  await app.pg.query('select 1')
  t.equal(app.pg.stats().idle, 1)
  await app.close()
  await app.pg.pool.close()
  t.has(app.pg.stats(), { total: 0, idle: 0, active: 0, waiting: 0 })
})
