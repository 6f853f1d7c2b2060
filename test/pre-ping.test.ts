/**
 * Ping before handing out a connection that sat idle: a connection silently dropped by the
 * network (a NAT or load balancer idle timeout) is detected within pingTimeoutMs and replaced,
 * and the handler never sees it.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import type { PgPoolOptions } from '../src/index.js'
import { buildApp } from './helpers/app.js'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, listen, send, until } from './helpers/util.js'

const db = await setupDatabase(t)

const PING_IDLE = 50
const PING_TIMEOUT = 300

async function pidRoute (t: Test, options: PgPoolOptions) {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { max: 1, connectionString: url, pingTimeoutMs: PING_TIMEOUT, ...options })
  app.get('/pid', async (req) => (await req.db.query('select pg_backend_pid() as pid')).rows[0])
  const pid = async (): Promise<{ status: number, pid: number, ms: number }> => {
    const start = performance.now()
    const res = await app.inject('/pid')
    return { status: res.statusCode, pid: res.json().pid, ms: performance.now() - start }
  }
  return { proxy, app, pid }
}

t.test('a blackholed idle connection is replaced; the request succeeds in about pingTimeoutMs', async (t) => {
  const { proxy, app, pid } = await pidRoute(t, { pingIdleMs: PING_IDLE })
  const first = await pid()
  t.equal(first.status, 200)
  await sleep(PING_IDLE * 2) // the connection idles past the ping threshold
  proxy.blackhole()
  const second = await pid()
  t.equal(second.status, 200, 'the handler never saw the dead connection')
  t.not(second.pid, first.pid, 'a new connection served it')
  t.ok(second.ms >= PING_TIMEOUT - 5, `waited for the ping timeout (${Math.round(second.ms)} ms)`)
  t.ok(second.ms < PING_TIMEOUT + 1000, 'and not much longer')
  t.equal(app.pg.stats().total, 1, 'the dead connection left the pool')
})

t.test('the same fault fails the request when pinging is off (the test above can fail)', async (t) => {
  const { proxy, pid } = await pidRoute(t, { pingIdleMs: false, query_timeout: 1000 })
  t.equal((await pid()).status, 200)
  await sleep(PING_IDLE * 2)
  proxy.blackhole()
  t.equal((await pid()).status, 500, 'the query went to the dead socket and timed out')
})

t.test('a healthy idle connection answers the ping and is kept', async (t) => {
  const { pid } = await pidRoute(t, { pingIdleMs: PING_IDLE })
  const first = await pid()
  await sleep(PING_IDLE * 2)
  const second = await pid()
  t.equal(second.status, 200)
  t.equal(second.pid, first.pid, 'the same backend served after its ping')
})

t.test('a request that ends while its connection is being pinged takes nothing', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { max: 1, connectionString: url, pingIdleMs: PING_IDLE, pingTimeoutMs: 5000 })
  const outcome = deferred<unknown>()
  const ended = deferred()
  app.get('/', async (req, reply) => {
    reply.raw.once('close', () => ended.resolve())
    try {
      outcome.resolve((await req.db.query('select 1 as n')).rows)
    } catch (error) {
      outcome.resolve(error)
    }
    return 'ok'
  })
  t.equal((await app.pg.query('select 1 as n')).rowCount, 1)
  await sleep(PING_IDLE * 2)
  proxy.hold() // the ping will wait for the network
  const base = await listen(app)
  const sent = send(base)
  await until(() => app.pg.stats().idle === 0, 'the checkout is pinging the idle connection')
  sent.req.destroy()
  await ended.promise
  proxy.resume()
  t.match(await outcome.promise, { code: 'FST_PG_REQUEST_ENDED' }, 'the query never ran')
  await until(() => app.pg.stats().idle === 1, 'the pinged connection went back to the pool')
  t.equal(app.pg.stats().total, 1)
})

t.test('a connection reused before pingIdleMs is not pinged', async (t) => {
  // With a long threshold the blackholed connection is handed out unpinged: the query fails.
  const { proxy, pid } = await pidRoute(t, { pingIdleMs: 60_000, query_timeout: 500 })
  t.equal((await pid()).status, 200)
  proxy.blackhole()
  t.equal((await pid()).status, 500)
})

t.test('pingIdleMs: 0 pings every reused connection', async (t) => {
  const { proxy, pid } = await pidRoute(t, { pingIdleMs: 0 })
  const first = await pid()
  proxy.blackhole()
  const second = await pid()
  t.equal(second.status, 200)
  t.not(second.pid, first.pid)
})

t.test('a reset (RST) idle connection is replaced', async (t) => {
  const { proxy, pid } = await pidRoute(t, { pingIdleMs: PING_IDLE })
  const first = await pid()
  proxy.reset()
  await sleep(PING_IDLE * 2)
  const second = await pid()
  t.equal(second.status, 200)
  t.not(second.pid, first.pid)
})

t.test('a flow the network forgot (RST on the next packet): the ping fails fast and is replaced', async (t) => {
  const { proxy, pid } = await pidRoute(t, { pingIdleMs: PING_IDLE, pingTimeoutMs: 5000 })
  const first = await pid()
  await sleep(PING_IDLE * 2)
  proxy.forget()
  const second = await pid()
  t.equal(second.status, 200)
  t.not(second.pid, first.pid)
  t.ok(second.ms < 1000, `replaced without waiting for pingTimeoutMs (${Math.round(second.ms)} ms)`)
})

t.test('a connection opened for a checkout that was abandoned is still pinged once it idled', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const connecting = deferred()
  const proceed = deferred()
  let first = true
  const app = await buildApp(t, db, {
    max: 1,
    connectionString: url,
    pingIdleMs: PING_IDLE,
    onConnect: async () => {
      if (!first) return
      first = false
      connecting.resolve()
      await proceed.promise
    }
  })
  const ended = deferred()
  app.get('/pid', async (req, reply) => {
    reply.raw.once('close', () => ended.resolve())
    return (await req.db.query('select pg_backend_pid() as pid')).rows[0]
  })
  const base = await listen(app)
  const sent = send(`${base}/pid`)
  await connecting.promise
  sent.req.destroy()
  await ended.promise
  proceed.resolve()
  await until(() => app.pg.stats().idle === 1, 'the unused new connection is pooled')
  await sleep(PING_IDLE * 2)
  proxy.blackhole()
  const res = await app.inject('/pid')
  t.equal(res.statusCode, 200, 'it was pinged, found dead and replaced')
})
