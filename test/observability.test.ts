/**
 * Seeing the pool: stats() counters and latency summaries, diagnostics_channel events, and
 * leak detection, against the real server.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import t from 'tap'
import { buildApp, holdRoute, poolOf } from './helpers/app.js'
import { closedPort, proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, logLines, until } from './helpers/util.js'

const db = await setupDatabase(t)

/** Collects the messages of a diagnostics channel for the rest of the test. */
function listen (t: { teardown (fn: () => void): void }, name: string): Array<Record<string, any>> {
  const messages: Array<Record<string, any>> = []
  const fn = (message: unknown): void => { messages.push(message as Record<string, any>) }
  subscribe(name, fn)
  t.teardown(() => unsubscribe(name, fn))
  return messages
}

t.test('stats(): counts, counters since start, wait and hold times; JSON, no secrets', async (t) => {
  const app = await buildApp(t, db, { max: 2, pingIdleMs: 0, maxWaiting: 1, acquireTimeoutMs: 500, underPressure: false })
  app.get('/', async (req) => (await req.db.query('select 1 as x')).rows[0])
  app.get('/slow', async (req) => (await req.db.query('select pg_sleep(0.05)')).rowCount)
  const held = holdRoute(app)
  const again = holdRoute(app, '/hold-again')
  t.equal((await app.inject('/')).statusCode, 200)
  t.equal((await app.inject('/')).statusCode, 200) // reused: pinged (pingIdleMs 0)
  // Two held, one waits (then times out), one refused at once: a full queue.
  const hold = [app.inject('/hold'), app.inject('/hold')]
  await held.holding
  await until(() => app.pg.stats().active === 2, 'both held')
  const waiting = app.inject('/')
  await until(() => app.pg.stats().waiting === 1, 'one waits')
  t.equal((await app.inject('/')).json().code, 'FST_PG_QUEUE_FULL')
  t.equal((await waiting).json().code, 'FST_PG_ACQUIRE_TIMEOUT')
  held.release()
  await Promise.all(hold)
  // A waiter served 60 ms later.
  const holding = [app.inject('/hold-again'), app.inject('/hold-again')]
  await until(() => app.pg.stats().active === 2, 'both held again')
  const served = app.inject('/')
  await until(() => app.pg.stats().waiting === 1, 'one waits')
  await new Promise((resolve) => setTimeout(resolve, 60))
  again.release()
  t.equal((await served).statusCode, 200)
  await Promise.all(holding)
  await app.inject('/slow')

  const stats = app.pg.stats()
  // Four served in the first part (every reuse pinged: pingIdleMs 0), three in the second, and /slow.
  t.match(stats, {
    total: 2,
    idle: 2,
    active: 0,
    waiting: 0,
    acquires: 8,
    created: 2,
    pings: 6,
    pingFailures: 0,
    acquireTimeouts: 1,
    queueFull: 1,
    connectFailures: 0,
    shed: 0,
    leaks: 0,
    cancels: 0,
    cancelsSettled: 0,
    windowMs: 60_000
  })
  t.same(stats.destroyed, { error: 0, ping: 0, suspect: 0, idle: 0, lifetime: 0, uses: 0, close: 0, unpooled: 0, stuck: 0 })
  t.equal(stats.acquireWaitMs.count, 8, 'successful checkouts only')
  t.equal(stats.holdMs.count, 8)
  t.ok(stats.acquireWaitMs.max >= 55, `the longest wait was the waiter served after 60 ms (${stats.acquireWaitMs.max} ms)`)
  t.ok(stats.holdMs.max >= 50, `the longest hold includes the 50 ms statement (${stats.holdMs.max} ms)`)
  for (const summary of [stats.acquireWaitMs, stats.holdMs]) {
    t.ok(summary.p50 <= summary.p90 && summary.p90 <= summary.p99 && summary.p99 <= summary.max, 'ordered percentiles')
  }
  t.same(JSON.parse(JSON.stringify(stats)), stats, 'JSON round trip')
  t.notMatch(JSON.stringify(stats), /postgres:postgres|password/)
})

t.test('destroyed connections are counted by reason', async (t) => {
  const app = await buildApp(t, db, { max: 3, maxUses: 1 })
  await app.pg.query('select 1')
  await until(() => app.pg.stats().destroyed.uses === 1, 'retired after its use')
  const client = await app.pg.pool.connect()
  client.release(new Error('bad'))
  await app.close()
  const { destroyed, created } = app.pg.stats()
  t.same(destroyed, { error: 1, ping: 0, suspect: 0, idle: 0, lifetime: 0, uses: 1, close: 0, unpooled: 0, stuck: 0 })
  t.equal(created, 2)
})

t.test('diagnostics channels: acquire, ping, release, destroy, with timings and the request id', async (t) => {
  const acquire = listen(t, 'fastify-pg-pool:acquire')
  const ping = listen(t, 'fastify-pg-pool:ping')
  const release = listen(t, 'fastify-pg-pool:release')
  const destroy = listen(t, 'fastify-pg-pool:destroy')
  const app = await buildApp(t, db, { max: 1, pingIdleMs: 0, maxWaiting: 0, underPressure: false }, { genReqId: () => 'req-1' })
  app.get('/', async (req) => (await req.db.query('select 1 as x')).rows[0])
  const held = holdRoute(app)
  await app.inject('/')
  await app.inject('/')
  t.match(acquire, [
    { requestId: 'req-1', waitMs: Number, created: true, pings: 0 },
    { requestId: 'req-1', waitMs: Number, created: false, pings: 1 }
  ])
  t.match(ping, [{ requestId: 'req-1', idleMs: Number, durationMs: Number, ok: true }])
  t.match(release, [{ requestId: 'req-1', holdMs: Number }, { requestId: 'req-1', holdMs: Number }])
  for (const message of [...acquire, ...ping, ...release]) t.equal(message.pool, app.pg.pool, 'each message names its pool')

  // A failed checkout: the pool is held and nobody may wait.
  const hold = app.inject('/hold')
  await held.holding
  t.equal((await app.inject('/')).statusCode, 503)
  t.match(acquire.at(-1), { requestId: 'req-1', error: { code: 'FST_PG_QUEUE_FULL' } })
  held.release()
  await hold

  // A failed ping: the backend is gone.
  await db.admin("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'fpp-app'")
  await until(() => app.pg.stats().total === 0 || destroy.length > 0, 'the pool heard of it')
  await app.close()
  t.ok(destroy.length >= 1)
  t.match(destroy[0], { reason: String, ageMs: Number, uses: Number })
})

t.test('a failed ping is published', async (t) => {
  const ping = listen(t, 'fastify-pg-pool:ping')
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, max: 1, pingIdleMs: 0, pingTimeoutMs: 100 })
  await app.pg.query('select 1')
  proxy.blackhole() // the idle connection's answers stop: its ping times out
  t.equal((await app.pg.query('select 1 as x')).rows[0].x, 1, 'served by a new connection')
  t.match(ping, [{ ok: false, idleMs: Number, durationMs: Number, error: Error }])
  t.ok(ping[0]!.durationMs >= 95, `after the ping timeout (${Math.round(ping[0]!.durationMs)} ms)`)
  t.match(app.pg.stats(), { pings: 1, pingFailures: 1, destroyed: { ping: 1 } })

  // The same from a request: its id travels with the message.
  app.get('/', async (req) => (await req.db.query('select 1 as x')).rows[0])
  proxy.blackhole()
  t.same((await app.inject({ url: '/', headers: { 'request-id': 'x' } })).json(), { x: 1 })
  t.match(ping.at(-1), { ok: false, requestId: String })
})

t.test('diagnostics channels: shed requests, and counted', async (t) => {
  const shed = listen(t, 'fastify-pg-pool:shed')
  const app = await buildApp(t, db, { max: 1, maxWaiting: 0 }, { genReqId: () => 'shed-me' })
  const held = holdRoute(app)
  app.get('/', async (req) => (await req.db.query('select 1')).rowCount)
  const hold = app.inject('/hold')
  await held.holding
  await until(async () => (await app.inject('/')).statusCode === 503 && shed.length > 0, 'a request is shed', 2000)
  t.match(shed[0], { requestId: 'shed-me', method: 'GET', url: '/', retryAfter: Number })
  t.ok(app.pg.stats().shed >= 1)
  held.release()
  await hold
})

t.test('nobody subscribed: nothing is built (the channels report no subscribers)', async (t) => {
  const { channel } = await import('node:diagnostics_channel')
  for (const name of ['acquire', 'ping', 'release', 'destroy', 'shed']) {
    t.equal(channel(`fastify-pg-pool:${name}`).hasSubscribers, false, name)
  }
})

t.test('leak detection: one warn with route, method, request id, held time and the stack of the checkout', async (t) => {
  const { stream, lines } = logLines()
  const app = await buildApp(t, db, { leakDetectionMs: 100 }, { logger: { level: 'warn', stream }, genReqId: () => 'leaky' })
  const held = holdRoute(app, '/leaky')
  const hold = app.inject('/leaky')
  await held.holding
  await until(() => lines.some((l) => /leakDetectionMs/.test(l.msg)), 'the leak is reported', 2000)
  await new Promise((resolve) => setTimeout(resolve, 150)) // a second period: still one line
  held.release()
  await hold
  const leaks = lines.filter((l) => /leakDetectionMs/.test(l.msg))
  t.equal(leaks.length, 1, 'one line per checkout')
  t.match(leaks[0], { level: 40, requestId: 'leaky', method: 'GET', route: '/leaky', heldMs: Number, stack: /checked out here/ })
  t.ok(leaks[0]!.heldMs >= 100)
  t.match(leaks[0]!.stack, /test\/helpers\/app\.ts/, 'the stack reaches the handler that checked it out')
  t.equal(app.pg.stats().leaks, 1)
})

t.test('leak detection: a pool.connect() client never released', async (t) => {
  const { stream, lines } = logLines()
  const app = await buildApp(t, db, { leakDetectionMs: 50, closeTimeoutMs: 0 }, { logger: { level: 'warn', stream } })
  const client = await app.pg.pool.connect()
  await client.query('select 1')
  await until(() => lines.some((l) => /leakDetectionMs/.test(l.msg)), 'the leak is reported', 2000)
  t.match(lines.find((l) => /leakDetectionMs/.test(l.msg)), { stack: /observability\.test\.ts/ })
  client.release()
})

t.test('leak detection off: no stack captured, no warning', async (t) => {
  const { stream, lines } = logLines()
  const app = await buildApp(t, db, { leakDetectionMs: false }, { logger: { level: 'warn', stream } })
  const held = holdRoute(app)
  const hold = app.inject('/hold')
  await held.holding
  t.equal(poolOf(app).leakDetection, false)
  await new Promise((resolve) => setTimeout(resolve, 50))
  held.release()
  await hold
  await app.pg.query('select 1') // no stack captured for fastify.pg.query either
  t.same(lines, [])
  await t.rejects(buildApp(t, db, { leakDetectionMs: -1 }), { code: 'FST_PG_INVALID_OPTION', message: /leakDetectionMs/ })
})

t.test('a connection that never opened is a connect failure, not a destroyed connection', async (t) => {
  const destroy = listen(t, 'fastify-pg-pool:destroy')
  const url = new URL(db.url)
  url.port = String(await closedPort())
  const app = await buildApp(t, db, { connectionString: url.toString() })
  await t.rejects(app.pg.query('select 1'), { code: 'FST_PG_UNAVAILABLE' })
  t.match(app.pg.stats(), { created: 0, connectFailures: 1, destroyed: { error: 0 } })
  t.same(destroy.filter((m) => m.pool === app.pg.pool), [])
})

t.test('created: only for a checkout that opened its connection (not for one an abandoned checkout left)', async (t) => {
  const acquire = listen(t, 'fastify-pg-pool:acquire')
  const gate = deferred()
  const app = await buildApp(t, db, { max: 1, onConnect: async () => { await gate.promise } })
  const abandon = new AbortController()
  const left = Promise.resolve(poolOf(app).acquire({ signal: abandon.signal })).catch((error: Error) => error.message)
  await until(() => app.pg.stats().total === 1, 'the connection is being opened')
  abandon.abort(new Error('left'))
  gate.resolve()
  t.equal(await left, 'left')
  await until(() => app.pg.stats().idle === 1, 'the connection went to the pool')
  await app.pg.query('select 1')
  t.match(acquire.filter((m) => m.pool === app.pg.pool).at(-1), { created: false })
  t.equal(app.pg.stats().created, 1)
})

t.test('example /metrics: two apps in one process each report their own pool', async (t) => {
  const { metrics } = await import('../example/metrics.js')
  const a = await buildApp(t, db)
  const b = await buildApp(t, db)
  await metrics(a)
  await metrics(b)
  for (let i = 0; i < 5; i++) await b.pg.query('select 1')
  const scrape = async (app: typeof a): Promise<string> => (await app.inject('/metrics')).body
  // (A labelled histogram shows only the label sets it observed.)
  t.notMatch(await scrape(a), /^pg_pool_acquire_wait_seconds_count\{db="default"\} [1-9]/m)
  t.match(await scrape(a), /^pg_pool_acquires_total\{db="default"\} 0$/m)
  t.match(await scrape(b), /^pg_pool_acquire_wait_seconds_count\{db="default"\} 5$/m)
  t.match(await scrape(b), /^pg_pool_acquires_total\{db="default"\} 5$/m)
})
