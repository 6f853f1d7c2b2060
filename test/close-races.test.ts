/**
 * Shutdown while connections are mid-way: being pinged, rolled back, or waiting for a query
 * that outlived its request. At the close deadline they are destroyed, and whatever was in
 * progress on them ends without handing out or pooling a destroyed connection.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildApp } from './helpers/app.js'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, listen, send, until } from './helpers/util.js'

const db = await setupDatabase(t)

const empty = { total: 0, idle: 0, active: 0, waiting: 0 }

t.test('close deadline during a ping: the checkout fails with FST_PG_POOL_CLOSED', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, pingIdleMs: 10, pingTimeoutMs: 5000, closeTimeoutMs: 100 })
  await app.pg.query('select 1')
  await sleep(30)
  proxy.hold()
  const checkout = t.rejects(app.pg.query('select 1'), { code: 'FST_PG_POOL_CLOSED' })
  await until(() => app.pg.stats().idle === 0, 'the ping is under way')
  await app.pg.pool.close()
  await checkout
  t.has(app.pg.stats(), empty)
})

t.test('close deadline during a rollback on return: the connection is destroyed, not pooled', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, pingTimeoutMs: 5000, closeTimeoutMs: 100 })
  const client = await app.pg.pool.connect()
  await client.query('begin')
  proxy.hold()
  client.release() // the ROLLBACK waits on the stalled network
  t.equal(app.pg.stats().active, 1)
  await app.pg.pool.close()
  t.has(app.pg.stats(), empty)
})

t.test('close deadline while a returned connection waits for its running query', async (t) => {
  const app = await buildApp(t, db, { closeTimeoutMs: 100 })
  const LOCK = 11
  await db.admin('select pg_advisory_lock($1)', [LOCK])
  const blocked = deferred()
  const ended = deferred()
  app.get('/', async (req, reply) => {
    reply.raw.once('close', () => ended.resolve())
    await req.db.query('select 1') // checked out
    const pending = req.db.query('select pg_advisory_xact_lock($1)', [LOCK])
    blocked.resolve()
    await pending.catch(() => {})
    return 'done'
  })
  const url = await listen(app)
  const sent = send(url)
  await blocked.promise
  sent.req.destroy()
  await ended.promise
  t.equal(app.pg.stats().active, 1, 'out of the pool until its query settles')
  await app.pg.pool.close()
  t.has(app.pg.stats(), empty)
  await db.admin('select pg_advisory_unlock($1)', [LOCK])
})

t.test('close while checkouts wait: they fail at once', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const holder = await app.pg.pool.connect()
  const waiting = t.rejects(app.pg.query('select 1'), { code: 'FST_PG_POOL_CLOSED' })
  await until(() => app.pg.stats().waiting === 1, 'a checkout waits')
  const closing = app.pg.pool.close()
  await waiting
  holder.release()
  await closing
  t.has(app.pg.stats(), empty)
})

t.test('a connect that fails after close began reports the pool closed', async (t) => {
  const connecting = deferred()
  const fail = deferred()
  const app = await buildApp(t, db, {
    onConnect: async () => {
      connecting.resolve()
      await fail.promise
      throw new Error('setup failed')
    }
  })
  const query = t.rejects(app.pg.query('select 1'), { code: 'FST_PG_POOL_CLOSED' })
  await connecting.promise
  const closing = app.pg.pool.close()
  fail.resolve()
  await query
  await closing
})
