/**
 * Several databases in one app: a default one and named ones (`name`), `fastify.pg.<name>`,
 * `request.dbs.<name>`, a route's `config.pgPool.db`, register order, encapsulated contexts,
 * coded errors for duplicate and unknown names, per-database shedding and a fallback. Two
 * databases of one server stand for two servers here; test/replica.test.ts uses a real primary
 * and its streaming replica.
 */
import { randomBytes } from 'node:crypto'
import { inspect } from 'node:util'
import underPressure from '@fastify/under-pressure'
import Fastify, { type FastifyInstance } from 'fastify'
import pg from 'pg'
import t from 'tap'
import pgPool, { type PgPoolOptions } from '../src/index.js'
import { closedPort, silentServer } from './helpers/net.js'
import { holdRoute } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, listen, logLines, send, until } from './helpers/util.js'

declare module '../src/index.js' {
  interface PgDatabases { replica: true, reports: true, scoped: true }
}

const db = await setupDatabase(t)
const other = 'fpp_other_' + randomBytes(4).toString('hex')
await db.admin(`create database ${other}`)
t.teardown(() => db.admin(`drop database if exists ${other} with (force)`))
const url = new URL(db.url)
url.pathname = '/' + other
const otherUrl = url.toString()
const mainName = new URL(db.url).pathname.slice(1)

const current = 'select current_database() as name'
const nameOf = (result: pg.QueryResult): string => result.rows[0].name

async function build (t: { teardown (fn: () => unknown): void }, main: PgPoolOptions = {}, replica: PgPoolOptions = {}, order: 'default first' | 'named first' = 'default first'): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(() => app.close())
  const registrations = [
    () => app.register(pgPool, { connectionString: db.url, ...main }),
    () => app.register(pgPool, { name: 'replica', connectionString: otherUrl, ...replica })
  ]
  if (order === 'named first') registrations.reverse()
  for (const register of registrations) register()
  return app
}

for (const order of ['default first', 'named first'] as const) {
  t.test(`fastify.pg, fastify.pg.<name>, request.db, request.dbs (${order})`, async (t) => {
    const app = await build(t, {}, {}, order)
    app.get('/default', async (req) => nameOf(await req.db.query(current)))
    app.get('/replica', { config: { pgPool: { db: 'replica' } } }, async (req) => ({
      db: nameOf(await req.db.query(current)),
      same: req.db === req.dbs.replica,
      main: nameOf(await req.dbs.default.query(current))
    }))
    app.get('/both', async (req) => ({
      db: nameOf(await req.db.query(current)),
      same: req.db === req.dbs.default,
      replica: nameOf(await req.dbs.replica.query(current))
    }))
    await app.ready()
    t.equal(nameOf(await app.pg.query(current)), mainName, 'fastify.pg is the default database')
    t.equal(nameOf(await app.pg.replica.query(current)), other, 'fastify.pg.replica is the named one')
    t.not(app.pg.replica.pool, app.pg.pool, 'each has its own pool')
    t.equal(await app.pg.replica.transaction(async (tx) => nameOf(await tx.query(current))), other)
    t.equal((await app.inject('/default')).body, mainName)
    t.same((await app.inject('/replica')).json(), { db: other, same: true, main: mainName })
    t.same((await app.inject('/both')).json(), { db: mainName, same: true, replica: other })
    t.same(Object.keys(app.pg).sort(), ['connect', 'healthCheck', 'pool', 'pressureHandler', 'query', 'replica', 'stats', 'transaction'])
  })
}

t.test('lazy per database: a route that never touches the replica takes no replica connection', async (t) => {
  const app = await build(t)
  app.get('/main', async (req) => nameOf(await req.db.query(current)))
  app.get('/touch', async (req) => {
    // Reading request.dbs.replica checks nothing out either: only a statement does.
    t.ok(req.dbs.replica)
    return 'ok'
  })
  for (let i = 0; i < 5; i++) t.equal((await app.inject('/main')).statusCode, 200)
  t.equal((await app.inject('/touch')).statusCode, 200)
  t.equal(app.pg.replica.stats().acquires, 0, 'no replica checkout')
  t.equal(app.pg.replica.stats().total, 0, 'no replica connection')
  t.equal(app.pg.stats().acquires, 5)
})

t.test('an aborted request that used both databases returns both connections', async (t) => {
  const app = await build(t, { max: 1 }, { max: 1 })
  const using = deferred()
  app.get('/slow', async (req) => {
    await req.db.query('select 1')
    await req.dbs.replica.query('select 1')
    using.resolve()
    await req.dbs.replica.query('select pg_sleep(30)')
    return 'never'
  })
  app.get('/quick', { config: { pgPool: { db: 'replica' } } }, async (req) => {
    await req.dbs.default.query('select 1')
    return nameOf(await req.db.query(current))
  })
  const base = await listen(app)
  const sent = send(base + '/slow')
  await using.promise
  t.equal(app.pg.stats().active, 1)
  t.equal(app.pg.replica.stats().active, 1)
  sent.req.destroy()
  await until(() => app.pg.stats().active === 0 && app.pg.replica.stats().active === 0, 'both connections are back')
  const res = await app.inject('/quick')
  t.equal(res.body, other, 'both pools (max 1) serve the next request')
  const { rows } = await db.admin("select count(*)::int as n from pg_stat_activity where query like '%pg_sleep(30)%' and state = 'active' and pid <> pg_backend_pid()")
  t.equal(rows[0].n, 0, 'the sleeping statement was cancelled')
})

t.test('app.close() closes every database', async (t) => {
  const app = await build(t, { min: 1, application_name: 'fpp-close-a' }, { min: 1, application_name: 'fpp-close-b' })
  await app.pg.query('select 1')
  await app.pg.replica.query('select 1')
  const count = async (): Promise<number> => (await db.admin("select count(*)::int as n from pg_stat_activity where application_name in ('fpp-close-a', 'fpp-close-b')")).rows[0].n
  t.ok(await count() >= 2)
  await app.close()
  t.ok(app.pg.pool.ended && app.pg.replica.pool.ended, 'both pools ended')
  await until(async () => await count() === 0, 'no backend left')
})

t.test('a name registered twice, or a second default: FST_PG_ALREADY_REGISTERED', async (t) => {
  for (const [first, second] of [[{ name: 'replica' }, { name: 'replica' }], [{}, {}]] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(pgPool, { connectionString: db.url, ...first })
    app.register(pgPool, { connectionString: db.url, ...second })
    await t.rejects(async () => { await app.ready() }, { code: 'FST_PG_ALREADY_REGISTERED' })
  }
  // Also when the first is in a parent context.
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(pgPool, { name: 'replica', connectionString: db.url })
  app.register(async (child) => { child.register(pgPool, { name: 'replica', connectionString: db.url }) })
  await t.rejects(async () => { await app.ready() }, { code: 'FST_PG_ALREADY_REGISTERED', message: /`replica`/ })
})

t.test('unknown names: a coded error at ready for a route; undefined on request.dbs and fastify.pg, which inspect and serialise', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pgPool, { connectionString: db.url })
  app.get('/typo', { config: { pgPool: { db: 'replcia' as 'replica' } } }, async () => 'never')
  await t.rejects(async () => { await app.ready() }, { code: 'FST_PG_INVALID_OPTION', message: /config\.pgPool\.db.*`default` is.*got `replcia`/ })

  const app2 = await build(t)
  app2.get('/dbs', async (req) => ({
    typo: typeof (req.dbs as unknown as Record<string, unknown>).replcia,
    // (Node's inspection reads properties nobody declared, `href` among them.)
    inspected: inspect(req.dbs).length > 0,
    keys: Object.keys(req.dbs)
  }))
  await app2.ready()
  t.same((await app2.inject('/dbs')).json(), { typo: 'undefined', inspected: true, keys: [] })
  t.equal((app2.pg as unknown as Record<string, unknown>).replcia, undefined)
  t.notOk('replcia' in app2.pg)
  t.match(inspect(app2.pg), /replica/, 'fastify.pg inspects')
  t.equal((app2.pg as unknown as { then?: unknown }).then, undefined, 'not a thenable')
  const single = Fastify()
  t.teardown(() => single.close())
  await single.register(pgPool, { connectionString: db.url })
  t.match(inspect(single.pg), /pool/, 'one database: fastify.pg inspects')
})

t.test('fallback: validated when the route is added and at ready', async (t) => {
  const cases: Array<[object, RegExp]> = [
    [{ db: 'replica', fallback: 'replica' }, /config\.pgPool\.fallback.*another database/],
    [{ fallback: 'default' }, /config\.pgPool\.fallback.*another database/],
    [{ db: 42 }, /config\.pgPool\.db/],
    [{ db: 'replica', fallback: '' }, /config\.pgPool\.fallback/]
  ]
  for (const [config, message] of cases) {
    const app = await build(t)
    t.throws(() => app.get('/x', { config: { pgPool: config } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message })
  }
  const app = await build(t)
  app.get('/x', { config: { pgPool: { db: 'replica', fallback: 'reports' } } }, async () => 'x')
  await t.rejects(async () => { await app.ready() }, { code: 'FST_PG_INVALID_OPTION', message: /config\.pgPool\.fallback.*`default`, `replica` are/ })
})

t.test('only named databases: the default one is a coded error, named ones work', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pgPool, { name: 'replica', connectionString: otherUrl })
  app.get('/none', async (req) => await req.db.query('select 1'))
  app.get('/named', { config: { pgPool: { db: 'replica' } } }, async (req) => nameOf(await req.db.query(current)))
  await app.ready()
  t.throws(() => app.pg.query('select 1'), { code: 'FST_PG_UNKNOWN_DATABASE', message: /No default database/ })
  t.equal(nameOf(await app.pg.replica.query(current)), other)
  const none = await app.inject('/none')
  t.equal(none.statusCode, 500)
  t.equal(none.json().code, 'FST_PG_UNKNOWN_DATABASE')
  t.equal((await app.inject('/named')).body, other)
})

t.test('encapsulated contexts: a database registered in a context is seen there and in its children only', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(pgPool, { connectionString: db.url })
  app.register(async (child) => {
    // A route added before the database it names is registered (in the same context).
    child.get('/scoped', { config: { pgPool: { db: 'scoped' } } }, async (req) => ({
      db: nameOf(await req.db.query(current)),
      main: nameOf(await req.dbs.default.query(current))
    }))
    child.register(pgPool, { name: 'scoped', connectionString: otherUrl })
    child.register(async (grandchild) => {
      grandchild.get('/deeper', async (req) => nameOf(await req.dbs.scoped.query(current)))
    })
    child.after(() => { t.equal(child.pg.scoped.pool, child.pg.scoped.pool) })
  })
  app.register(async (sibling) => {
    sibling.get('/sibling', async (req) => ({ has: 'scoped' in req.dbs }))
  })
  app.get('/root', async () => ({ has: 'scoped' in app.pg }))
  await app.ready()
  t.same((await app.inject('/scoped')).json(), { db: other, main: mainName })
  t.equal((await app.inject('/deeper')).body, other)
  t.same((await app.inject('/sibling')).json(), { has: false })
  t.same((await app.inject('/root')).json(), { has: false })

  const bad = Fastify()
  t.teardown(() => bad.close())
  bad.register(pgPool, { connectionString: db.url })
  bad.register(async (child) => { child.register(pgPool, { name: 'scoped', connectionString: otherUrl }) })
  bad.register(async (sibling) => { sibling.get('/x', { config: { pgPool: { db: 'scoped' } } }, async () => 'x') })
  await t.rejects(async () => { await bad.ready() }, { code: 'FST_PG_INVALID_OPTION', message: /config\.pgPool\.db/ })
})

t.test('the route transaction is on the route database; the route statement timeout on every database', async (t) => {
  const app = await build(t)
  app.get('/tx', { config: { pgPool: { db: 'replica', transaction: true, statementTimeoutMs: 200 } } }, async (req) => {
    const inTx = await req.db.query('select now() = statement_timestamp() as fresh')
    const outside = await req.dbs.default.query('select now() = statement_timestamp() as fresh')
    const slow = await req.dbs.default.query('select pg_sleep(2)').then(() => 'ran', (error) => error.code)
    return { replicaInTransaction: !inTx.rows[0].fresh, defaultInTransaction: !outside.rows[0].fresh, slow }
  })
  // (now() is the transaction's start: within the route's transaction, a later statement sees an older now().)
  app.get('/probe', { config: { pgPool: { db: 'replica', transaction: true } } }, async (req) => {
    await req.db.query('select pg_sleep(0.01)')
    return (await req.db.query('select now() <> statement_timestamp() as tx')).rows[0]
  })
  await app.ready()
  t.same((await app.inject('/probe')).json(), { tx: true }, 'the route database runs in a transaction')
  const res = (await app.inject('/tx')).json()
  t.equal(res.defaultInTransaction, false, 'the other database is not in the route transaction')
  t.equal(res.slow, '57014', 'the route statement timeout applies on the other database')
})

t.test('shedding per database: a saturated replica sheds its routes and the routes seen using it, not the others', async (t) => {
  const { stream, lines } = logLines()
  const app = Fastify({ logger: { level: 'warn', stream } })
  t.teardown(() => app.close())
  await app.register(pgPool, { connectionString: db.url, max: 2 })
  await app.register(pgPool, { name: 'replica', connectionString: otherUrl, max: 1, maxWaiting: 1, acquireTimeoutMs: 5000 })
  const { holding, release } = holdRoute(app, '/hold', { config: { pgPool: { db: 'replica' } } })
  app.get('/read', { config: { pgPool: { db: 'replica' } } }, async (req) => nameOf(await req.db.query(current)))
  app.get('/write', async (req) => nameOf(await req.db.query(current)))
  app.get('/mixed', async (req) => ({ a: nameOf(await req.db.query(current)), b: nameOf(await req.dbs.replica.query(current)) }))
  app.get('/fallback', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => nameOf(await req.db.query(current)))
  await app.ready()
  t.equal((await app.inject('/mixed')).statusCode, 200, 'the mixed route used the replica once')
  const held = app.inject('/hold')
  await holding
  const queued = app.inject('/read')
  await until(() => app.pg.replica.stats().waiting === 1, 'a replica checkout waits')
  await until(() => app.isUnderPressure(), 'under-pressure saw the replica saturated')
  const read = await app.inject('/read')
  t.equal(read.statusCode, 503)
  t.equal(read.json().code, 'FST_PG_SATURATED')
  t.match(read.headers['retry-after'], /^[1-9]\d*$/)
  t.equal((await app.inject('/mixed')).statusCode, 503, 'a route seen using the replica is shed too')
  const write = await app.inject('/write')
  t.equal(write.statusCode, 200, 'a write route answers')
  t.equal(write.body, mainName)
  const fallback = await app.inject('/fallback')
  t.equal(fallback.statusCode, 200, 'a route with a fallback is served')
  t.equal(fallback.body, mainName, 'by the default database')
  t.equal(app.pg.replica.stats().shed, 2)
  t.equal(app.pg.stats().shed, 0)
  t.ok(lines.some((l) => l.db === 'replica' && /pool saturated/.test(l.msg)), 'the diagnosis names the database')
  release()
  t.equal((await held).statusCode, 200)
  t.equal((await queued).statusCode, 200)
  await until(() => !app.isUnderPressure(), 'drained')
  t.equal((await app.inject('/read')).body, other)
})

t.test('replica down: its routes get a coded 503 within the deadline; a fallback route is served by the default database', async (t) => {
  const down = `postgres://postgres:postgres@127.0.0.1:${await closedPort()}/postgres`
  const app = await build(t, {}, { connectionString: down, acquireTimeoutMs: 1000 })
  app.get('/read', { config: { pgPool: { db: 'replica' } } }, async (req) => nameOf(await req.db.query(current)))
  app.get('/fallback', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => nameOf(await req.db.query(current)))
  app.get('/write', async (req) => nameOf(await req.db.query(current)))
  await app.ready()
  const start = performance.now()
  const read = await app.inject('/read')
  t.ok(performance.now() - start < 1500, 'within the acquire deadline')
  t.equal(read.statusCode, 503)
  t.equal(read.json().code, 'FST_PG_UNAVAILABLE')
  t.equal((await app.inject('/fallback')).body, mainName, 'fallback served by the default database')
  t.equal((await app.inject('/write')).body, mainName)
  t.equal(app.pg.stats().active, 0)
})

t.test('under-pressure is registered once, by the first registration that does not say false, in either order', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(pgPool, { connectionString: db.url, underPressure: { maxEventLoopDelay: 1000 } })
  app.register(pgPool, { name: 'replica', connectionString: otherUrl, underPressure: { maxEventLoopDelay: 1000 } })
  await t.rejects(async () => { await app.ready() }, { code: 'FST_PG_INVALID_OPTION', message: /underPressure.*registered once, with the options of the first database that registered it/ })

  for (const order of ['default first', 'named first'] as const) {
    const app = await build(t, { underPressure: false }, { underPressure: { exposeStatusRoute: true } }, order)
    await app.ready()
    t.match((await app.inject('/status')).json(), { pools: { default: { total: 0 }, replica: { total: 0 } } }, order)
  }
})

t.test('the status route shows every database', async (t) => {
  const app = await build(t, { underPressure: { exposeStatusRoute: true } })
  await app.ready()
  const body = (await app.inject('/status')).json()
  t.match(body, { status: 'ok', pool: { total: 0 }, pools: { default: { total: 0 }, replica: { total: 0 } } })
})

t.test('a typo in a route\'s db where only named databases are registered: the error lists them', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pgPool, { name: 'replica', connectionString: otherUrl })
  app.get('/x', { config: { pgPool: { db: 'replcia' as 'replica' } } }, async () => 'x')
  await t.rejects(async () => { await app.ready() }, { code: 'FST_PG_INVALID_OPTION', message: /\(`replica` is\) \(route GET \/x\), got `replcia`/ })
})

t.test('request.dbs in a hook that runs before the plugin\'s: FST_PG_NOT_READY', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.addHook('onRequest', async (req) => { await req.dbs.replica.query('select 1') })
  await app.register(pgPool, { connectionString: db.url })
  await app.register(pgPool, { name: 'replica', connectionString: otherUrl })
  app.get('/', async () => 'x')
  const res = await app.inject('/')
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_PG_NOT_READY')
})

t.test('a route with a fallback is shed when both its databases are saturated', async (t) => {
  const app = await build(t, { max: 1, maxWaiting: 0, acquireTimeoutMs: 5000 }, { max: 1, maxWaiting: 0, acquireTimeoutMs: 5000 })
  const release = deferred()
  let holding = 0
  const hold = async (req: { db: { query: (text: string) => Promise<unknown> } }): Promise<string> => {
    await req.db.query('select 1')
    holding++
    await release.promise
    return 'held'
  }
  app.get('/hold-main', async (req) => await hold(req))
  app.get('/hold-replica', { config: { pgPool: { db: 'replica' } } }, async (req) => await hold(req))
  app.get('/fallback', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => nameOf(await req.db.query(current)))
  await app.ready()
  const held = [app.inject('/hold-replica')]
  await until(() => holding === 1, 'the replica is held')
  await until(() => app.isUnderPressure(), 'the replica is saturated')
  t.equal((await app.inject('/fallback')).body, mainName, 'one saturated: falls back')
  held.push(app.inject('/hold-main'))
  await until(() => holding === 2, 'the default database is held too')
  const res = await app.inject('/fallback')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_PG_SATURATED')
  release.resolve()
  for (const h of held) t.equal((await h).statusCode, 200)
})

t.test('under-pressure registered by the app: every registration says false, and its check covers every database', async (t) => {
  const early = Fastify()
  t.teardown(() => early.close())
  await early.register(pgPool, { connectionString: db.url, underPressure: false })
  await early.register(underPressure, { healthCheck: early.pg.healthCheck, healthCheckInterval: 25, pressureHandler: early.pg.pressureHandler })
  early.register(pgPool, { name: 'replica', connectionString: otherUrl })
  await t.rejects(async () => { await early.ready() }, { code: 'FST_PG_INVALID_OPTION', message: /underPressure.*false when @fastify\/under-pressure is already registered/ })

  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pgPool, { connectionString: db.url, underPressure: false })
  await app.register(pgPool, { name: 'replica', connectionString: otherUrl, underPressure: false, max: 1, maxWaiting: 0, acquireTimeoutMs: 3000 })
  await app.register(underPressure, { healthCheck: app.pg.healthCheck, healthCheckInterval: 25, pressureHandler: app.pg.pressureHandler })
  const { holding, release } = holdRoute(app, '/hold', { config: { pgPool: { db: 'replica' } } })
  app.get('/read', { config: { pgPool: { db: 'replica' } } }, async (req) => await req.db.query('select 1').then(() => 'ok'))
  app.get('/write', async (req) => await req.db.query('select 1').then(() => 'ok'))
  await app.ready()
  const held = app.inject('/hold')
  await holding
  await until(() => app.isUnderPressure(), 'the app\'s under-pressure saw the replica saturated')
  t.equal((await app.inject('/read')).json().code, 'FST_PG_SATURATED')
  t.equal((await app.inject('/write')).body, 'ok')
  release()
  await held
})

t.test('a name registered in a child context, then in its parent: FST_PG_ALREADY_REGISTERED (it would shadow)', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(async (child) => { child.register(pgPool, { name: 'replica', connectionString: otherUrl }) })
  app.register(pgPool, { connectionString: db.url })
  app.register(pgPool, { name: 'replica', connectionString: otherUrl })
  await t.rejects(async () => { await app.ready() }, { code: 'FST_PG_ALREADY_REGISTERED', message: /`replica`/ })
  // Siblings may each have their own.
  const siblings = Fastify()
  t.teardown(() => siblings.close())
  for (const path of ['/a', '/b']) {
    siblings.register(async (child) => {
      await child.register(pgPool, { name: 'replica', connectionString: path === '/a' ? db.url : otherUrl })
      child.get(path, { config: { pgPool: { db: 'replica' } } }, async (req) => nameOf(await req.db.query(current)))
    })
  }
  await siblings.ready()
  t.equal((await siblings.inject('/a')).body, mainName)
  t.equal((await siblings.inject('/b')).body, other)
})

t.test('after a fallback: request.dbs.<fallback> is request.db (one connection), and request.dbs.<route db> still names the route database', async (t) => {
  const down = `postgres://postgres:postgres@127.0.0.1:${await closedPort()}/postgres`
  const app = await build(t, { max: 1, acquireTimeoutMs: 1000 }, { connectionString: down })
  app.get('/read-then-write', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => {
    const read = await req.db.query('select pg_backend_pid() as pid')
    const write = await req.dbs.default.query('select pg_backend_pid() as pid')
    const replica = await req.dbs.replica.query('select 1').then(() => 'ran', (error) => error.code)
    return { same: read.rows[0].pid === write.rows[0].pid, sameHandle: req.dbs.default === req.db, replica }
  })
  await app.ready()
  t.same((await app.inject('/read-then-write')).json(), { same: true, sameHandle: true, replica: 'FST_PG_UNAVAILABLE' }, 'one connection of the default database (max 1: no wait on itself)')
  t.equal(app.pg.stats().active, 0)
})

t.test('a request that ends while its checkout on the route database waits does not fall back', async (t) => {
  for (const how of ['connecting to a silent server', 'queued behind a held connection'] as const) {
    const { stream, lines } = logLines()
    const app = Fastify({ logger: { level: 'debug', stream } })
    t.teardown(() => app.close())
    await app.register(pgPool, { connectionString: db.url })
    const replica = how === 'queued behind a held connection'
      ? { connectionString: otherUrl, max: 1, maxWaiting: 10, acquireTimeoutMs: 5000 }
      : { connectionString: `postgres://postgres:postgres@127.0.0.1:${await silentServer(t)}/postgres`, acquireTimeoutMs: 2000 }
    await app.register(pgPool, { name: 'replica', underPressure: false, ...replica })
    const { holding, release } = holdRoute(app, '/hold', { config: { pgPool: { db: 'replica' } } })
    const waiting = deferred()
    app.get('/fallback', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => {
      const result = req.db.query(current)
      waiting.resolve()
      return nameOf(await result)
    })
    const base = await listen(app)
    const held = how === 'queued behind a held connection' ? app.inject('/hold') : undefined
    if (held !== undefined) await holding
    const sent = send(base + '/fallback')
    await waiting.promise
    await until(() => how === 'queued behind a held connection' ? app.pg.replica.stats().waiting === 1 : app.pg.replica.stats().total === 1, 'the replica checkout waits')
    sent.req.destroy()
    await until(() => app.pg.replica.stats().waiting === 0 && app.pg.replica.stats().total === (held === undefined ? 0 : 1), 'the checkout was abandoned')
    await new Promise((resolve) => setTimeout(resolve, 100))
    t.equal(app.pg.stats().acquires, 0, `${how}: no checkout on the fallback database`)
    t.notOk(lines.some((l) => /falling back/.test(l.msg)), 'nor an attempt')
    release()
    await held
  }
})

t.test('a route with a fallback skips a database that failed it for a second, then one request tries it again', async (t) => {
  const silent = await silentServer(t)
  const app = await build(t, {}, { connectionString: `postgres://postgres:postgres@127.0.0.1:${silent}/postgres`, acquireTimeoutMs: 300 })
  app.get('/fallback', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => nameOf(await req.db.query(current)))
  await app.ready()
  const timed = async (): Promise<number> => {
    const started = performance.now()
    const res = await app.inject('/fallback')
    t.equal(res.body, mainName)
    return performance.now() - started
  }
  t.ok(await timed() >= 290, 'the first request waits out the replica\'s deadline')
  const acquires = app.pg.replica.stats().acquireTimeouts
  t.ok(await timed() < 250, 'the next one skips it')
  t.equal(app.pg.replica.stats().acquireTimeouts, acquires, 'without a checkout on the replica')
  await new Promise((resolve) => setTimeout(resolve, 1000))
  // A second later, one request tries the replica again; those arriving meanwhile skip it.
  const probe = timed()
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.ok(await timed() < 250, 'a request during the retry skips it')
  t.ok(await probe >= 290, 'the retry waits out the deadline')
  t.equal(app.pg.replica.stats().acquireTimeouts, acquires + 1)
})

t.test('without shedding, a fallback route whose databases are both full tries its own, then the fallback, and answers their 503', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pgPool, { connectionString: db.url, max: 1, maxWaiting: 0, underPressure: false })
  await app.register(pgPool, { name: 'replica', connectionString: otherUrl, max: 1, maxWaiting: 0, underPressure: false })
  const release = deferred()
  let holding = 0
  app.get('/hold/:db', async (req) => {
    await req.dbs[(req.params as { db: 'default' | 'replica' }).db].query('select 1')
    holding++
    await release.promise
    return 'held'
  })
  app.get('/fallback', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => nameOf(await req.db.query(current)))
  await app.ready()
  const held = [app.inject('/hold/replica'), app.inject('/hold/default')]
  await until(() => holding === 2, 'both held')
  const res = await app.inject('/fallback')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_PG_QUEUE_FULL')
  t.equal(app.pg.replica.stats().acquires, 1, 'the replica was tried (and refused)')
  release.resolve()
  for (const h of held) t.equal((await h).statusCode, 200)
  t.equal((await app.inject('/fallback')).body, mainName, 'free again, but the replica failed it: skipped for a second')
  await new Promise((resolve) => setTimeout(resolve, 1000))
  t.equal((await app.inject('/fallback')).body, other, 'then served by its own database again')
  t.equal((await app.inject('/fallback')).body, other)
})

t.test('a name keeps its handle: request.dbs touched before the first statement of a fallback route settles', async (t) => {
  const app = await build(t)
  app.get('/early', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => {
    const db = req.db
    const replica = req.dbs.replica
    const early = { replicaIsDb: replica === db, defaultIsDb: req.dbs.default === db }
    await db.query('select 1')
    return { ...early, stillSame: req.dbs.replica === replica, on: nameOf(await req.db.query(current)) }
  })
  await app.ready()
  t.same((await app.inject('/early')).json(), { replicaIsDb: false, defaultIsDb: false, stillSame: true, on: other })
})

t.test('a fallback to a named database', async (t) => {
  const down = `postgres://postgres:postgres@127.0.0.1:${await closedPort()}/postgres`
  const app = await build(t, { connectionString: down })
  app.get('/', { config: { pgPool: { fallback: 'replica' } } }, async (req) => nameOf(await req.db.query(current)))
  await app.ready()
  t.equal((await app.inject('/')).body, other)
})

t.test('a route naming a member of fastify.pg as its database: refused when added', async (t) => {
  const app = await build(t)
  t.throws(() => app.get('/x', { config: { pgPool: { db: 'pool' as 'replica' } } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message: /config\.pgPool\.db/ })
})
