/**
 * request.db.connection() and fastify.pg.pool.connect(): the real client for cursors and
 * streams, guarded so that it is returned exactly once and never used after its time.
 */
import t from 'tap'
import type { PoolClient } from 'pg'
import Cursor from 'pg-cursor'
import { assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred } from './helpers/util.js'

const db = await setupDatabase(t)

t.test('connection(): the same backend as query(); a user release() returns nothing early', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req) => {
    const client = await req.db.connection()
    const a = (await client.query('select pg_backend_pid() as pid')).rows[0].pid
    client.release()
    client.release() // habits from pg-pool must not double-release
    const b = (await req.db.query('select pg_backend_pid() as pid')).rows[0].pid
    const c = (await client.query('select pg_backend_pid() as pid')).rows[0].pid
    t.equal(client, await req.db.connection(), 'one client per request')
    return { same: a === b && b === c }
  })
  const res = await app.inject('/')
  t.same(res.json(), { same: true })
  await assertReturned(t, app, db)
  t.equal(app.pg.stats().total, 1)
})

t.test('connection(): release(err) has the connection destroyed when the request ends', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req) => {
    const client = await req.db.connection()
    await client.query('select 1')
    client.release(new Error('this session is in a state I do not trust'))
    return 'ok'
  })
  t.equal((await app.inject('/')).statusCode, 200)
  await assertReturned(t, app, db)
  t.equal(app.pg.stats().idle, 1, 'a fresh connection was opened by the follow-up query')
})

t.test('connection(): the client refuses queries after the request ended', async (t) => {
  const app = await buildApp(t, db)
  const kept = deferred<PoolClient>()
  app.get('/', async (req) => {
    kept.resolve(await req.db.connection())
    return 'ok'
  })
  await app.inject('/')
  const client = await kept.promise
  await t.rejects(client.query('select 1'), { code: 'FST_PG_REQUEST_ENDED' })
  const viaCallback = await new Promise((resolve) => client.query('select 1', (err: Error) => resolve(err)))
  t.match(viaCallback, { code: 'FST_PG_REQUEST_ENDED' })
  t.throws(() => client.query({ submit () {} } as never), { code: 'FST_PG_REQUEST_ENDED' })
  t.equal(typeof client.escapeLiteral, 'function', 'the rest of the client is reachable')
})

t.test('request.db after the end: connection() and query() refuse', async (t) => {
  const app = await buildApp(t, db)
  let saved: { connection (): Promise<unknown>, query (s: string): Promise<unknown> } | undefined
  app.get('/', async (req) => {
    saved = req.db
    return 'ok'
  })
  await app.inject('/')
  await t.rejects(saved!.connection(), { code: 'FST_PG_REQUEST_ENDED' })
  await t.rejects(saved!.query('select 1'), { code: 'FST_PG_REQUEST_ENDED' })
  t.equal(app.pg.stats().total, 0, 'nothing was checked out for it')
})

t.test('pool.connect(): release once returns it; twice throws; use after release refuses', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const client = await app.pg.pool.connect()
  t.same((await client.query('select 1 as n')).rows, [{ n: 1 }])
  t.equal(app.pg.stats().active, 1)
  client.release()
  t.equal(app.pg.stats().idle, 1)
  t.throws(() => client.release(), { code: 'FST_PG_DOUBLE_RELEASE' })
  await t.rejects(client.query('select 1'), { code: 'FST_PG_RELEASED' })
  const again = await app.pg.pool.connect()
  again.release(true)
  t.equal(app.pg.stats().total, 0, 'release(true) destroys')
})

t.test('request.db first touched after the response closed: refused, nothing checked out', async (t) => {
  const app = await buildApp(t, db)
  const outcome = deferred<unknown>()
  app.get('/', async (req, reply) => {
    reply.raw.once('close', () => {
      req.db.query('select 1').then(outcome.resolve, outcome.resolve)
    })
    return 'ok'
  })
  await app.inject('/')
  t.match(await outcome.promise, { code: 'FST_PG_REQUEST_ENDED' })
  t.equal(app.pg.stats().total, 0)
})

t.test('a late release(err) from an ended request cannot condemn the next request\'s connection', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const kept = deferred<PoolClient>()
  app.get('/keep', async (req) => {
    kept.resolve(await req.db.connection())
    return 'ok'
  })
  app.get('/pid', async (req) => (await req.db.query('select pg_backend_pid() as pid')).rows[0])
  await app.inject('/keep')
  const stale = await kept.promise
  const before = (await app.inject('/pid')).json().pid
  stale.release(new Error('too late'))
  await app.inject('/pid')
  const after = (await app.inject('/pid')).json().pid
  t.equal(after, before, 'the pooled connection was neither destroyed nor replaced')
})

t.test('pool.connect(): release() with a cursor still open closes the cursor and pools the connection', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const client = await app.pg.pool.connect()
  const cursor = client.query(new Cursor('select i from generate_series(1, 100000) as i'))
  t.equal((await cursor.read(10)).length, 10)
  client.release()
  await assertReturned(t, app, db)
  t.equal(app.pg.stats().total, 1, 'kept, not destroyed')
})

t.test('a cursor still queued behind a query when the request ends: the connection is destroyed, not leaked', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req) => {
    const client = await req.db.connection()
    client.query('select pg_sleep(0.05)').catch(() => {})
    client.query(new Cursor('select i from generate_series(1, 100000) as i'))
    return 'ok'
  })
  t.equal((await app.inject('/')).statusCode, 200)
  await assertReturned(t, app, db)
})
