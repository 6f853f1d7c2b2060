/**
 * Logs go through Fastify's logger: debug for ping failures and replacements (with the request
 * id), warn for missed deadlines and failed connects. No password in any line or error.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import t from 'tap'
import pgPool, { type PgPoolOptions } from '../src/index.js'
import { holdRoute } from './helpers/app.js'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { logLines } from './helpers/util.js'

const db = await setupDatabase(t)

async function logged (t: { teardown (fn: () => unknown): void }, options: PgPoolOptions) {
  const { stream, lines } = logLines()
  const app = Fastify({ logger: { level: 'debug', stream } })
  await app.register(pgPool, { connectionString: db.url, ...options })
  t.teardown(() => app.close())
  return { app, lines, text: () => lines.map((l) => JSON.stringify(l)).join('\n') }
}

t.test('a failed ping is logged at debug with the request id', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const { app, lines } = await logged(t, { connectionString: url, pingIdleMs: 20, pingTimeoutMs: 100 })
  app.get('/', async (req) => (await req.db.query('select 1 as n')).rows[0])
  await app.inject('/')
  await sleep(50)
  proxy.blackhole()
  const res = await app.inject('/')
  t.equal(res.statusCode, 200)
  const ping = lines.find((l) => /ping failed/.test(l.msg))
  t.ok(ping, 'a ping failure line')
  t.equal(ping?.level, 20, 'at debug level')
  t.ok(ping?.reqId, 'tagged with the request id')
  t.ok(ping?.idleMs >= 20, 'with how long the connection had idled')
})

t.test('a missed deadline is a warn line', async (t) => {
  const { app, lines } = await logged(t, { max: 1, acquireTimeoutMs: 300 })
  const { holding, release } = holdRoute(app)
  app.get('/', async (req) => (await req.db.query('select 1')).rows)
  const held = app.inject('/hold')
  await holding
  t.equal((await app.inject('/')).statusCode, 503)
  release()
  await held
  const warn = lines.find((l) => /acquireTimeoutMs/.test(l.msg))
  t.equal(warn?.level, 40)
  t.match(warn?.pool, { total: 1, waiting: 1 })
})

t.test('a rejected password never appears in logs or in the response', async (t) => {
  const secret = 'wrong-secret-8c1f'
  const url = new URL(db.url)
  url.password = secret
  const { app, text } = await logged(t, { connectionString: url.toString() })
  app.get('/', async (req) => (await req.db.query('select 1')).rows)
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_PG_UNAVAILABLE')
  t.match(res.json().message, /password authentication failed/)
  t.notMatch(res.body, secret)
  t.match(text(), /could not open a connection/)
  t.notMatch(text(), secret)

  url.password = ''
  const { app: app2, text: text2 } = await logged(t, { connectionString: url.toString(), password: secret })
  await t.rejects(app2.pg.query('select 1'), { code: 'FST_PG_UNAVAILABLE' })
  t.notMatch(text2(), secret)
})
