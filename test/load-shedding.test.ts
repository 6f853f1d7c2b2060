/**
 * Exhaustion: a bounded wait queue, saturation fed to @fastify/under-pressure (503 in
 * onRequest, before the handler), route opt-outs, recovery without restart, a Retry-After
 * from the measured drain rate, and one diagnosis line when shedding starts.
 */
import underPressure from '@fastify/under-pressure'
import Fastify from 'fastify'
import t from 'tap'
import pgPool, { type PgPoolOptions } from '../src/index.js'
import { holdRoute } from './helpers/app.js'
import { ReturnRate } from '../src/return-rate.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, logLines, until } from './helpers/util.js'

const db = await setupDatabase(t)

async function build (t: { teardown (fn: () => unknown): void }, options: PgPoolOptions) {
  const { stream, lines } = logLines()
  const app = Fastify({ logger: { level: 'warn', stream } })
  await app.register(pgPool, { connectionString: db.url, max: 1, maxWaiting: 1, ...options })
  t.teardown(() => app.close())
  // One connection held until the test lets go, one checkout queued behind it.
  const { holding, release } = holdRoute(app)
  let handled = 0
  let parsed = 0
  app.post('/work', {
    preValidation: async () => { parsed++ }
  }, async (req) => {
    handled++
    return (await req.db.query('select 1 as n')).rows[0]
  })
  app.get('/live', { config: { pgPool: { shedding: false } } }, async () => 'alive')
  const saturate = async () => {
    const held = app.inject('/hold')
    await holding
    const queued = app.inject({ method: 'POST', url: '/work', payload: {} })
    await until(() => app.pg.stats().waiting === 1, 'a checkout is queued')
    return { held, queued }
  }
  return { app, lines, release, saturate, counts: () => ({ handled, parsed }) }
}

t.test('a full wait queue: 503 FST_PG_QUEUE_FULL at once, with Retry-After', async (t) => {
  const { app, release, saturate } = await build(t, { underPressure: false, acquireTimeoutMs: 5000 })
  const { held, queued } = await saturate()
  const start = performance.now()
  const res = await app.inject({ method: 'POST', url: '/work', payload: {} })
  t.ok(performance.now() - start < 1000, 'refused at once, not at the deadline')
  t.equal(res.statusCode, 503)
  t.match(res.json(), { code: 'FST_PG_QUEUE_FULL', statusCode: 503 })
  t.match(res.headers['retry-after'], /^[1-9]\d*$/)
  release()
  t.equal((await held).statusCode, 200)
  t.equal((await queued).statusCode, 200, 'the queued checkout was served')
})

t.test('closeShedConnections: a shed request\'s connection is closed', async (t) => {
  const { app, release, saturate } = await build(t, { acquireTimeoutMs: 5000, closeShedConnections: true })
  const { held, queued } = await saturate()
  await until(() => app.isUnderPressure(), 'under-pressure saw the saturation')
  const res = await app.inject({ method: 'POST', url: '/work', payload: {} })
  t.equal(res.statusCode, 503)
  t.equal(res.headers.connection, 'close')
  release()
  await held
  await queued
})

t.test('saturated: shed in onRequest before parsing and handler; opted-out routes answer; drained: served again', async (t) => {
  const { app, lines, release, saturate, counts } = await build(t, { acquireTimeoutMs: 5000 })
  const { held, queued } = await saturate()
  await until(() => app.isUnderPressure(), 'under-pressure saw the saturation')
  const before = counts()
  const res = await app.inject({ method: 'POST', url: '/work', payload: { big: 'x'.repeat(1000) } })
  t.equal(res.statusCode, 503)
  t.match(res.json(), { code: 'FST_PG_SATURATED', statusCode: 503, error: 'Service Unavailable' })
  t.match(res.headers['retry-after'], /^[1-9]\d*$/)
  t.not(res.headers.connection, 'close', 'the keep-alive connection stays open for the retry')
  t.same(counts(), before, 'neither the body was parsed nor the handler called')
  t.equal((await app.inject('/live')).statusCode, 200, 'the opted-out route answers')

  const diagnosis = lines.filter((l) => /pool saturated/.test(l.msg))
  t.equal(diagnosis.length, 1, 'one diagnosis line')
  t.match(diagnosis[0], { level: 40, checkedOutByRoute: { 'GET /hold': 1 }, oldestHold: { route: 'GET /hold' } })

  release()
  await held
  await queued
  const after = await app.inject({ method: 'POST', url: '/work', payload: {} })
  t.equal(after.statusCode, 200, 'back to 200 once drained, no restart')
})

t.test('Retry-After follows the queue and the measured drain rate', async (t) => {
  const rate = new ReturnRate()
  t.equal(rate.retryAfterSeconds(5, 2000), 2, 'nothing drained lately: the checkout deadline')
  const now = performance.now()
  for (let i = 0; i < 20; i++) rate.record(now - i * 50) // 20 returns in the last second
  t.equal(rate.perSecond(now), 10, 'over a 2 s window')
  t.equal(rate.retryAfterSeconds(0, 2000), 1)
  t.equal(rate.retryAfterSeconds(19, 2000), 2)
  t.equal(rate.retryAfterSeconds(99, 2000), 10)
  t.equal(rate.retryAfterSeconds(10_000, 2000), 30, 'clamped')
  t.equal(rate.perSecond(now + 5000), 0, 'old returns age out')
})

t.test('under-pressure options pass through: status route with pool stats, the app\'s own health check', async (t) => {
  let healthy = true
  const app = Fastify()
  await app.register(pgPool, {
    connectionString: db.url,
    underPressure: {
      exposeStatusRoute: { url: '/status', routeOpts: {}, routeResponseSchemaOpts: { db: { type: 'string' } } },
      healthCheck: async () => healthy && { db: 'ok' }
    }
  })
  t.teardown(() => app.close())
  app.get('/', async () => 'ok')
  const status = await app.inject('/status')
  t.equal(status.statusCode, 200)
  t.equal((await app.inject('/status')).statusCode, 200)
  t.match(status.json(), { status: 'ok', db: 'ok', pool: { total: 0, idle: 0, active: 0, waiting: 0 } })
  healthy = false
  await until(() => app.isUnderPressure(), 'the app\'s own check failed')
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_UNDER_PRESSURE', 'other pressure keeps under-pressure\'s answer')
  t.equal(res.headers['retry-after'], '10')
})

t.test('under-pressure registered by the app: a coded error unless underPressure is false, then wire it by hand', async (t) => {
  const twice = Fastify()
  await twice.register(underPressure, {})
  await t.rejects(async () => { await twice.register(pgPool, { connectionString: db.url }) }, { code: 'FST_PG_INVALID_OPTION', message: /underPressure/ })
  await twice.close()

  const app = Fastify()
  await app.register(pgPool, { connectionString: db.url, max: 1, maxWaiting: 0, underPressure: false })
  await app.register(underPressure, { healthCheck: app.pg.healthCheck, healthCheckInterval: 10, pressureHandler: app.pg.pressureHandler })
  t.teardown(() => app.close())
  app.get('/', async (req) => (await req.db.query('select 1 as n')).rows[0])
  const client = await app.pg.pool.connect()
  await until(() => app.isUnderPressure(), 'saturation reaches the app\'s under-pressure')
  t.equal((await app.inject('/')).json().code, 'FST_PG_SATURATED')
  client.release()
  t.equal((await app.inject('/')).statusCode, 200)
})

t.test('the diagnosis names holders outside requests and routeless requests, at most once per 10 s', async (t) => {
  // Saturated only once both connections are held and one checkout waits.
  const { app, lines } = await build(t, { max: 2, maxWaiting: 1 })
  const holding = deferred()
  const release = deferred()
  app.setNotFoundHandler(async (req) => {
    await req.db.query('select 1')
    holding.resolve()
    await release.promise
    return 'not found'
  })
  for (const c of await Promise.all([app.pg.pool.connect(), app.pg.pool.connect()])) c.release()
  const lost = app.inject('/nowhere')
  await holding.promise
  const outside = await app.pg.pool.connect()
  const waiting = app.pg.query('select 1')
  await until(() => app.isUnderPressure(), 'saturated')
  outside.release()
  release.resolve()
  await lost
  await waiting
  const again = await Promise.all([app.pg.pool.connect(), app.pg.pool.connect()])
  const waitingAgain = app.pg.query('select 1')
  await until(() => app.isUnderPressure(), 'saturated again')
  for (const c of again) c.release()
  await waitingAgain
  const diagnosis = lines.filter((l) => /pool saturated/.test(l.msg))
  t.equal(diagnosis.length, 1, 'rate limited')
  t.same(diagnosis[0]?.checkedOutByRoute, { '(outside a request)': 1, 'GET (no route)': 1 })
})

for (const exposeStatusRoute of [true, '/health'] as const) {
  t.test(`exposeStatusRoute: ${exposeStatusRoute}`, async (t) => {
    const app = Fastify()
    await app.register(pgPool, { connectionString: db.url, underPressure: { exposeStatusRoute } })
    t.teardown(() => app.close())
    const res = await app.inject(exposeStatusRoute === true ? '/status' : exposeStatusRoute)
    t.match(res.json(), { status: 'ok', pool: { total: 0 } })
  })
}

t.test('the diagnosis names connections nobody holds yet (being opened)', async (t) => {
  const connecting = deferred()
  const proceed = deferred()
  const { app, lines } = await build(t, {
    maxWaiting: 0,
    onConnect: async () => {
      connecting.resolve()
      await proceed.promise
    }
  })
  const query = app.pg.query('select 1')
  await connecting.promise
  await until(() => app.isUnderPressure(), 'saturated while connecting')
  proceed.resolve()
  await query
  t.match(lines.find((l) => /pool saturated/.test(l.msg)), { checkedOutByRoute: { '(opening)': 1 } })
})
