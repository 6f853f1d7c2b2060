/**
 * No connection within acquireTimeoutMs, or no database at all: a coded 503 with Retry-After
 * in Fastify's error shape. Never a hang, never a 500.
 */
import t, { type Test } from 'tap'
import { buildApp, holdRoute } from './helpers/app.js'
import { closedPort, proxied, silentServer } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'

const db = await setupDatabase(t)

function urlWithPort (port: number): string {
  const url = new URL(db.url)
  url.port = String(port)
  return url.toString()
}

function assert503 (t: Test, res: { statusCode: number, headers: Record<string, unknown>, json (): unknown }, code: string): void {
  t.equal(res.statusCode, 503)
  t.match(String(res.headers['retry-after']), /^[1-9]\d*$/, 'Retry-After is a whole number of seconds')
  t.match(res.json(), { statusCode: 503, code, error: 'Service Unavailable', message: String })
}

t.test('pool exhausted: 503 FST_PG_ACQUIRE_TIMEOUT after acquireTimeoutMs', async (t) => {
  const app = await buildApp(t, db, { max: 1, acquireTimeoutMs: 400 })
  const { holding, release } = holdRoute(app)
  app.get('/', async (req) => (await req.db.query('select 1 as n')).rows[0])
  const held = app.inject('/hold')
  await holding
  const start = performance.now()
  const res = await app.inject('/')
  const ms = performance.now() - start
  assert503(t, res, 'FST_PG_ACQUIRE_TIMEOUT')
  t.ok(ms >= 395 && ms < 1400, `answered at the deadline (${Math.round(ms)} ms)`)
  t.equal(app.pg.stats().waiting, 0, 'the timed-out checkout left the queue')
  release()
  t.equal((await held).statusCode, 200)
  t.equal((await app.inject('/')).statusCode, 200, 'served again once a connection is free')
})

t.test('waiters queued at different times each fail at their own deadline (one timer for the queue)', async (t) => {
  const app = await buildApp(t, db, { max: 1, maxWaiting: 5, acquireTimeoutMs: 400, underPressure: false })
  const { holding, release } = holdRoute(app)
  app.get('/', async (req) => (await req.db.query('select 1 as n')).rows[0])
  const held = app.inject('/hold')
  await holding
  const timed = async (): Promise<{ status: number, ms: number }> => {
    const start = performance.now()
    const res = await app.inject('/')
    return { status: res.statusCode, ms: performance.now() - start }
  }
  const first = timed()
  await new Promise((resolve) => setTimeout(resolve, 150))
  const second = timed()
  await new Promise((resolve) => setTimeout(resolve, 100))
  const third = timed() // served: the hold ends before its deadline
  const [a, b] = await Promise.all([first, second])
  release()
  const c = await third
  t.equal(a!.status, 503)
  t.equal(b!.status, 503)
  t.ok(a!.ms >= 395 && a!.ms < 1400, `the first at its deadline (${Math.round(a!.ms)} ms)`)
  t.ok(b!.ms >= 395 && b!.ms < 1400, `the second at its own deadline, not the first's (${Math.round(b!.ms)} ms)`)
  t.equal(c.status, 200, `the third was served when the connection came back (${c.status} after ${Math.round(c.ms)} ms)`)
  t.equal((await held).statusCode, 200)
})

t.test('database refuses connections: 503 FST_PG_UNAVAILABLE at once', async (t) => {
  const app = await buildApp(t, db, { connectionString: urlWithPort(await closedPort()), acquireTimeoutMs: 5000 })
  app.get('/', async (req) => (await req.db.query('select 1')).rows)
  const start = performance.now()
  const res = await app.inject('/')
  assert503(t, res, 'FST_PG_UNAVAILABLE')
  t.ok(performance.now() - start < 2000, 'failed fast, without waiting for the deadline')
  t.has(app.pg.stats(), { total: 0, idle: 0, active: 0, waiting: 0 })
})

t.test('database accepts but never answers: 503 within acquireTimeoutMs', async (t) => {
  const app = await buildApp(t, db, { connectionString: urlWithPort(await silentServer(t)), acquireTimeoutMs: 300 })
  app.get('/', async (req) => (await req.db.query('select 1')).rows)
  const start = performance.now()
  const res = await app.inject('/')
  const ms = performance.now() - start
  assert503(t, res, 'FST_PG_ACQUIRE_TIMEOUT')
  t.ok(ms >= 295 && ms < 1300, `answered at the deadline (${Math.round(ms)} ms)`)
  t.equal(app.pg.stats().total, 0)
})

t.test('connectionTimeoutMillis shorter than the deadline: the connect failure is FST_PG_UNAVAILABLE', async (t) => {
  const app = await buildApp(t, db, {
    connectionString: urlWithPort(await silentServer(t)),
    connectionTimeoutMillis: 100,
    acquireTimeoutMs: 2000
  })
  app.get('/', async (req) => (await req.db.query('select 1')).rows)
  assert503(t, await app.inject('/'), 'FST_PG_UNAVAILABLE')
})

t.test('the deadline covers pings and replacements: a dead network answers 503, never hangs', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, pingIdleMs: 0, pingTimeoutMs: 3000, acquireTimeoutMs: 1000 })
  app.get('/', async (req) => (await req.db.query('select 1 as n')).rows[0])
  t.equal((await app.inject('/')).statusCode, 200)
  proxy.blackhole()
  const start = performance.now()
  const res = await app.inject('/')
  const ms = performance.now() - start
  assert503(t, res, 'FST_PG_ACQUIRE_TIMEOUT')
  t.ok(ms < 2500, `the ping was cut short by the deadline (${Math.round(ms)} ms)`)
})

t.test('fastify.pg.query fails with the same coded errors', async (t) => {
  const app = await buildApp(t, db, { connectionString: urlWithPort(await closedPort()) })
  await t.rejects(app.pg.query('select 1'), { code: 'FST_PG_UNAVAILABLE', statusCode: 503 })
})
