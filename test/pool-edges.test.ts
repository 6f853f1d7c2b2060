/**
 * Pool behaviours around a connection's edges of life: lifetime, checkouts abandoned or closed
 * while a connection is being opened, a process allowed to exit while connections idle.
 */
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import pgPool from '../src/index.js'
import { assertReturned, buildApp, poolOf } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, listen, runNode, send, until } from './helpers/util.js'

const db = await setupDatabase(t)

t.test('maxLifetimeSeconds: an idle connection is closed at its lifetime; a lent one when it comes back', async (t) => {
  const app = await buildApp(t, db, { max: 2, maxLifetimeSeconds: 0.2, maxLifetimeJitter: 0 })
  // Opened in this order, the lent one reaches its lifetime first.
  const lent = await app.pg.pool.connect()
  const idle = await app.pg.pool.connect()
  idle.release()
  t.equal(app.pg.stats().total, 2)
  await until(() => app.pg.stats().idle === 0, 'the idle one is closed at its lifetime')
  t.equal(app.pg.stats().total, 1, 'the lent one stays while in use')
  lent.release()
  t.equal(app.pg.stats().total, 0, 'and is closed when released')
})

t.test('a request that ends while its connection is being opened takes nothing; the connection is pooled', async (t) => {
  const connecting = deferred()
  const proceed = deferred()
  const app = await buildApp(t, db, {
    onConnect: async () => {
      connecting.resolve()
      await proceed.promise
    }
  })
  const outcome = deferred<unknown>()
  const ended = deferred()
  app.get('/', async (req, reply) => {
    reply.raw.once('close', () => ended.resolve())
    try {
      await req.db.query('select 1')
      outcome.resolve('ran')
    } catch (error) {
      outcome.resolve(error)
    }
    return 'ok'
  })
  const url = await listen(app)
  const sent = send(url)
  await connecting.promise
  sent.req.destroy()
  await sent.done
  await ended.promise
  proceed.resolve()
  t.match(await outcome.promise, { code: 'FST_PG_REQUEST_ENDED' }, 'the query never ran')
  await until(() => app.pg.stats().idle === 1, 'the new connection went to the pool')
})

t.test('close while a connection is being opened: that checkout, under way, is served (as pg-pool\'s end() lets it), then the connection closes; a new one fails', async (t) => {
  const connecting = deferred()
  const proceed = deferred()
  const app = Fastify()
  await app.register(pgPool, {
    connectionString: db.url,
    onConnect: async () => {
      connecting.resolve()
      await proceed.promise
    }
  })
  const query = app.pg.query('select 1 as n')
  await connecting.promise
  const closing = app.pg.pool.close()
  await t.rejects(app.pg.query('select 2'), { code: 'FST_PG_POOL_CLOSED' }, 'a checkout asked for after close() fails')
  proceed.resolve()
  t.same((await query).rows, [{ n: 1 }])
  await closing
  await app.close()
  t.has(app.pg.stats(), { total: 0, idle: 0, active: 0, waiting: 0 })
})

t.test('the pool shuts (closeTimeoutMs: 0) while a connection is being opened: that checkout fails with FST_PG_POOL_CLOSED, nothing is left open', async (t) => {
  const connecting = deferred()
  const proceed = deferred()
  const app = Fastify()
  await app.register(pgPool, {
    connectionString: db.url,
    closeTimeoutMs: 0,
    onConnect: async () => {
      connecting.resolve()
      await proceed.promise
    }
  })
  const events: string[] = []
  for (const event of ['connect', 'remove'] as const) app.pg.pool.on(event, () => events.push(event))
  const query = t.rejects(app.pg.query('select 1'), { code: 'FST_PG_POOL_CLOSED' })
  await connecting.promise
  const closing = app.pg.pool.close()
  await closing
  proceed.resolve()
  await query
  t.same(events, [], "no 'connect' for a connection closed before it was ready (no 'remove' would follow)")
  await app.close()
  t.has(app.pg.stats(), { total: 0, idle: 0, active: 0, waiting: 0 })
})

t.test('a malformed query rejects its own promise and the request goes on', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    await req.db.query('select 1')
    await t.rejects(req.db.query(null as never), TypeError)
    return (await req.db.query('select 2 as n')).rows[0]
  })
  t.same((await app.inject('/')).json(), { n: 2 })
})

t.test('request.db read in a hook that runs before the plugin\'s own: coded error', async (t) => {
  const app = Fastify()
  app.addHook('onRequest', async (req) => { req.db.query('select 1') })
  await app.register(pgPool, { connectionString: db.url })
  t.teardown(() => app.close())
  const res = await app.inject('/')
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_PG_NOT_READY')
})

t.test('allowExitOnIdle: idle sockets do not hold the event loop; lent ones do', async (t) => {
  const app = await buildApp(t, db, { allowExitOnIdle: true })
  // Only sockets that keep the process alive are listed as active resources.
  const holding = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length
  const client = await app.pg.pool.connect()
  const lent = holding()
  client.release()
  t.equal(holding(), lent - 1, 'idle: the socket is unref()ed')
  const again = await app.pg.pool.connect()
  t.equal(holding(), lent, 'lent again: ref()ed')
  again.release()
})

t.test('allowExitOnIdle lets the process exit while connections idle', async (t) => {
  const script = fileURLToPath(new URL('./fixtures/exit-on-idle.ts', import.meta.url))
  const run = (allow: boolean) => runNode(['--import', 'tsx', script, db.url, String(allow)], { timeout: 8000 })
  const allowed = run(true)
  t.equal(allowed.status, 0, 'exited by itself')
  t.match(allowed.stdout, 'queried')
  const held = run(false)
  t.equal(held.signal, 'SIGTERM', 'without it, the idle connection keeps the process alive until killed')
})

t.test('a slot freed by a destroyed connection goes to the next waiting checkout', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const holder = await app.pg.pool.connect()
  const pid = (await holder.query('select pg_backend_pid() as pid')).rows[0].pid
  const waiting = app.pg.query('select pg_backend_pid() as pid')
  await until(() => app.pg.stats().waiting === 1, 'a checkout waits')
  holder.release(new Error('discard this session'))
  const { rows } = await waiting
  t.not(rows[0].pid, pid, 'the waiter got a new connection')
})

t.test('acquire with an already-aborted signal on a full pool fails at once', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const holder = await app.pg.pool.connect()
  const reason = new Error('caller left')
  await t.rejects(async () => await poolOf(app).acquire({ signal: AbortSignal.abort(reason) }), reason)
  t.equal(app.pg.stats().waiting, 0)
  holder.release()
})

t.test('idleTimeoutMillis: 0 keeps idle connections', async (t) => {
  const app = await buildApp(t, db, { idleTimeoutMillis: 0 })
  await app.pg.query('select 1')
  await sleep(100)
  t.equal(app.pg.stats().idle, 1)
})

t.test('onConnect throwing a non-Error is still a coded 503', async (t) => {
  const app = await buildApp(t, db, { onConnect: () => { throw 'nope' } }) // eslint-disable-line no-throw-literal
  await t.rejects(app.pg.query('select 1'), { code: 'FST_PG_UNAVAILABLE' })
})

t.test('maxLifetimeMs: false (or 0) keeps connections; maxLifetimeSeconds is honoured when it is not set', async (t) => {
  for (const options of [{ maxLifetimeMs: false as const }, { maxLifetimeMs: 0 }, { maxLifetimeSeconds: 0 }]) {
    const app = await buildApp(t, db, { ...options, maxLifetimeJitter: 0 })
    await app.pg.query('select 1')
    await sleep(50)
    t.equal(app.pg.stats().idle, 1, JSON.stringify(options))
  }
  const app = await buildApp(t, db, { maxLifetimeSeconds: 0.05, maxLifetimeJitter: 0 })
  await app.pg.query('select 1')
  await until(() => app.pg.stats().total === 0, 'closed at the maxLifetimeSeconds lifetime')
})

t.test('a malformed statement as the request\'s last one does not keep the connection out', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req) => {
    await req.db.query('select 1')
    await req.db.query(undefined as never).catch(() => {})
    return 'ok'
  })
  t.equal((await app.inject('/')).statusCode, 200)
  await t.rejects(app.pg.query(null as never), TypeError)
  await assertReturned(t, app, db)
})

t.test('an onConnect that hangs is bounded by the checkout deadline', async (t) => {
  const app = await buildApp(t, db, { acquireTimeoutMs: 200, onConnect: () => new Promise(() => {}) })
  const start = performance.now()
  await t.rejects(app.pg.query('select 1'), { code: 'FST_PG_ACQUIRE_TIMEOUT' })
  t.ok(performance.now() - start < 1500)
  t.equal(app.pg.stats().total, 0)
})

t.test('a client-side query_timeout condemns that connection only', async (t) => {
  const app = await buildApp(t, db, { max: 4, query_timeout: 100, pingIdleMs: false })
  const clients = await Promise.all([1, 2, 3, 4].map(() => app.pg.pool.connect()))
  for (const c of clients) c.release()
  await t.rejects(app.pg.query('select pg_sleep(0.5)'), { code: 'FST_PG_CONNECTION_LOST', cause: { message: 'Query read timeout' } })
  // The statement it gave up on may still run on the server: it is cancelled, then the connection closed.
  await until(() => app.pg.stats().total === 3, 'the timed-out connection is closed')
  t.has(app.pg.stats(), { total: 3, idle: 3, active: 0, waiting: 0, cancels: 1 }, 'its peers stay pooled')
  await t.rejects(app.pg.query({ text: 'select pg_sleep(0.5)', retry: true }), { code: 'FST_PG_CONNECTION_LOST', cause: { message: 'Query read timeout' } }, 'and it is not retried')
})

t.test('a client released after the pool destroyed it at the close deadline: nothing more happens', async (t) => {
  const app = await buildApp(t, db, { max: 1, closeTimeoutMs: 0 })
  const client = await app.pg.pool.connect()
  await app.close()
  t.equal(app.pg.stats().destroyed.close, 1, 'destroyed at the deadline')
  t.doesNotThrow(() => client.release(), 'its release is accepted')
  t.match(app.pg.stats(), { total: 0, idle: 0, destroyed: { close: 1, error: 0 } }, 'and changes nothing')
  t.throws(() => client.release(), { code: 'FST_PG_DOUBLE_RELEASE' })
})
