/**
 * `fastify.pg.pool` as a pg.Pool: pg-pool's events with their arguments, `end()` (promise and
 * callback, once for good), `options` without secrets in JSON, the counts, and the callback
 * style of `connect()` and `query()`, on a real server.
 */
import t from 'tap'
import pg, { type PoolClient, type QueryResult } from 'pg'
import { buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { logLines, until } from './helpers/util.js'

const db = await setupDatabase(t)

t.test('connect, acquire, release and remove carry the connection, in that order', async (t) => {
  const app = await buildApp(t, db, { maxUses: 2 })
  const pool = app.pg.pool
  const seen: Array<[string, unknown, unknown?]> = []
  pool.on('connect', (client) => seen.push(['connect', client]))
  pool.on('acquire', (client) => seen.push(['acquire', client]))
  pool.on('release', (err, client) => seen.push(['release', client, err]))
  pool.on('remove', (client) => seen.push(['remove', client]))
  app.get('/', async (req) => (await req.db.query('select 1 as n')).rows[0])
  await app.inject('/')
  await app.inject('/')
  await until(() => seen.length === 6, 'the second return removed the connection (maxUses: 2)')
  t.same(seen.map(([event]) => event), ['connect', 'acquire', 'release', 'acquire', 'release', 'remove'])
  const client = seen[0]?.[1]
  t.ok(seen.every(([, c]) => c === client), 'every event names the same pg client')
  t.equal(typeof (client as { processID?: unknown }).processID, 'number', "it is the connection's pg.Client")
  t.same(seen.filter(([e]) => e === 'release').map(([, , err]) => err), [undefined, undefined], 'released without an error')
})

t.test("release(err) on a pool.connect() client: 'release' carries the error, the connection is removed", async (t) => {
  const app = await buildApp(t, db)
  const pool = app.pg.pool
  const released: unknown[] = []
  const removed: unknown[] = []
  pool.on('release', (err) => released.push(err))
  pool.on('remove', (c) => removed.push(c))
  const client = await pool.connect()
  const failure = new Error('the caller found it broken')
  client.release(failure)
  t.same(released, [failure])
  await until(() => removed.length === 1, 'removed')
  t.equal(pool.totalCount, 0)
})

t.test("an idle connection that dies is an 'error' event with pg's error and the client, then 'remove'", async (t) => {
  const app = await buildApp(t, db, { application_name: 'fpp-contract-idle' })
  const pool = app.pg.pool
  await app.pg.query('select 1')
  t.equal(pool.idleCount, 1)
  const errors: Array<[Error, unknown]> = []
  pool.on('error', (err, client) => errors.push([err, client]))
  // (Not events.once: it rejects on an 'error' event.)
  const removed = new Promise((resolve) => pool.once('remove', resolve))
  await db.admin("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'fpp-contract-idle'")
  const client = await removed
  t.equal(errors.length, 1)
  t.match(errors[0]?.[0].message, /terminat/i)
  t.equal(errors[0]?.[1], client)
  t.equal(pool.idleCount, 0)
})

t.test("with no 'error' listener an idle connection that dies does not crash the process", async (t) => {
  const app = await buildApp(t, db, { application_name: 'fpp-contract-quiet' })
  await app.pg.query('select 1')
  const removed = new Promise((resolve) => app.pg.pool.once('remove', resolve))
  await db.admin("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'fpp-contract-quiet'")
  await removed
  t.equal((await app.pg.query('select 2 as n')).rows[0].n, 2, 'the pool goes on')
})

t.test('connect(callback): (undefined, client, done); done(err) destroys, done() returns', async (t) => {
  const app = await buildApp(t, db)
  const pool = app.pg.pool
  const got = await new Promise<[unknown, PoolClient | undefined, (r?: unknown) => void]>((resolve) => {
    t.equal(pool.connect((err, client, done) => resolve([err, client, done])), undefined, 'returns nothing with a callback')
  })
  t.equal(got[0], undefined)
  t.equal((await got[1]?.query('select 1 as n'))?.rows[0].n, 1)
  const viaCallback = await new Promise((resolve) => got[1]?.query('select 2 as n', (err: Error | null, res: QueryResult) => resolve([err, res.rows[0].n])))
  t.same(viaCallback, [null, 2], "the client's callback style too")
  got[2]()
  await until(() => pool.idleCount === 1, 'returned to the pool')
  const second = await new Promise<[PoolClient | undefined, (r?: unknown) => void]>((resolve) => pool.connect((_e, c, done) => resolve([c, done])))
  second[1](new Error('broken'))
  await until(() => pool.totalCount === 0, 'done(err) destroyed it')
})

t.test('connect(callback) after end: the error reaches the callback, nothing is left checked out', async (t) => {
  const app = await buildApp(t, db)
  await app.pg.pool.end()
  const err = await new Promise<Error | undefined>((resolve) => app.pg.pool.connect((e) => resolve(e)))
  t.equal((err as { code?: string }).code, 'FST_PG_POOL_CLOSED')
})

t.test("query(text, values, cb), query(text, cb), query(config, cb): pg-pool's callback shapes", async (t) => {
  const app = await buildApp(t, db)
  const pool = app.pg.pool
  const call = async (...args: unknown[]): Promise<[unknown, QueryResult | undefined, unknown]> => await new Promise((resolve) => {
    const returned = (pool.query as (...a: unknown[]) => unknown)(...args, (err: unknown, res: QueryResult) => resolve([err, res, returned]))
  })
  const [e1, r1, ret1] = await call('select $1::int as n', [1])
  t.equal(e1, undefined)
  t.equal(r1?.rows[0].n, 1)
  t.equal(ret1, undefined, 'returns nothing with a callback')
  t.equal((await call('select 2 as n'))[1]?.rows[0].n, 2)
  t.equal((await call({ text: 'select $1::int as n', values: [3] }))[1]?.rows[0].n, 3)
  const [e4] = await call('select nope')
  t.equal((e4 as { code?: string }).code, '42703', "the server's error reaches the callback")
  await until(() => app.pg.stats().active === 0, 'nothing left checked out (the failed one back once its ReadyForQuery is read)')
})

t.test('a callback that is not last, or a function as the statement: FST_PG_CALLBACK', async (t) => {
  const app = await buildApp(t, db)
  const query = app.pg.pool.query as (...a: unknown[]) => unknown
  const calledBack = await new Promise((resolve) => query.call(app.pg.pool, resolve))
  t.match(calledBack, { code: 'FST_PG_CALLBACK' }, 'a function in the statement\'s place is called back with the error, as pg-pool does')
  t.throws(() => query.call(app.pg.pool, 'select 1', [], 'not a function'), { code: 'FST_PG_CALLBACK' })
  t.throws(() => (app.pg.pool.connect as (cb: unknown) => unknown)('nope'), { code: 'FST_PG_CALLBACK' })
  t.equal(app.pg.stats().acquires, 0, 'nothing checked out')
})

t.test('a stream or cursor given to pool.query(): FST_PG_SUBMITTABLE at once, nothing checked out', async (t) => {
  const app = await buildApp(t, db)
  const { default: Cursor } = await import('pg-cursor')
  t.throws(() => app.pg.pool.query(new Cursor('select 1')), { code: 'FST_PG_SUBMITTABLE' })
  t.equal(app.pg.stats().acquires, 0)
})

t.test('end(): idempotent, promise or callback; ending and ended; requests then get 503', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => (await req.db.query('select 1 as n')).rows[0])
  const pool = app.pg.pool
  await app.pg.query('select 1')
  t.same([pool.ending, pool.ended], [false, false])
  const first = pool.end()
  t.same([pool.ending, pool.ended], [true, false])
  t.equal(pool.end(), first, 'a second call returns the same promise')
  const viaCallback = new Promise<unknown[]>((resolve) => pool.end((...args: unknown[]) => resolve(args)))
  await first
  t.same(await viaCallback, [], 'the callback is called with no error')
  t.same([pool.ending, pool.ended, pool.totalCount], [true, true, 0])
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_PG_POOL_CLOSED')
  await app.close() // closing the app after end() is fine
})

t.test('end() while a request holds a connection: it finishes, then the connection closes', async (t) => {
  const app = await buildApp(t, db, { closeTimeoutMs: 5000 })
  let go!: () => void
  const wait = new Promise<void>((resolve) => { go = resolve })
  app.get('/', async (req) => {
    await req.db.query('select 1')
    ended = app.pg.pool.end()
    await wait
    return (await req.db.query('select 2 as n')).rows[0]
  })
  let ended: Promise<void> | undefined
  const res = app.inject('/')
  await until(() => ended !== undefined, 'end() called mid-request')
  go()
  t.same((await res).json(), { n: 2 }, 'the request that held a connection completes')
  await ended
  t.equal(app.pg.pool.totalCount, 0)
})

t.test('options: pg-pool\'s resolved numbers; the password and connection string out of JSON', async (t) => {
  const app = await buildApp(t, db, { max: 3, idleTimeoutMillis: 5000, maxLifetimeMs: 60_000, password: 'sekrit' })
  const { options } = app.pg.pool
  t.match(options, { max: 3, min: 0, idleTimeoutMillis: 5000, maxUses: Infinity, maxLifetimeSeconds: 60, allowExitOnIdle: false })
  t.equal(options.password, 'sekrit', 'there for a library that opens its own connection')
  t.equal(options.connectionString, db.url)
  const json = JSON.stringify(options)
  t.notMatch(json, /sekrit/)
  t.notMatch(json, /connectionString/)
})

t.test('expiredCount: connections past their lifetime still checked out', async (t) => {
  const app = await buildApp(t, db, { maxLifetimeMs: 200, maxLifetimeJitter: 0 })
  const client = await app.pg.pool.connect()
  t.equal(app.pg.pool.expiredCount, 0)
  await until(() => app.pg.pool.expiredCount === 1, 'its lifetime ends while checked out')
  client.release()
  await until(() => app.pg.pool.totalCount === 0, 'closed when it came back')
  t.equal(app.pg.pool.expiredCount, 0)
})

t.test("a Client class whose connect() only calls back (pg-pool's way of calling it) connects, and its failure is heard", async (t) => {
  let fail = false
  class CallbackOnly extends pg.Client {
    override connect (callback?: any): any {
      if (typeof callback !== 'function') throw new Error('this client takes a callback')
      if (fail) return process.nextTick(callback, new Error('connect refused by the test'))
      super.connect(callback)
    }
  }
  const app = await buildApp(t, db, { Client: CallbackOnly })
  t.equal((await app.pg.query('select 1 as n')).rows[0].n, 1)
  fail = true
  await app.pg.pool.end()
  const again = await buildApp(t, db, { Client: CallbackOnly })
  await t.rejects(again.pg.query('select 1'), { code: 'FST_PG_UNAVAILABLE', message: /connect refused by the test/ })
})

t.test("a listener that throws is logged; the connection still goes back and the process lives (found by an adversarial pass: 'release' crashed it, 'acquire' leaked the connection)", async (t) => {
  const { stream, lines } = logLines()
  const app = await buildApp(t, db, { max: 1 }, { logger: { stream } })
  for (const event of ['acquire', 'release', 'connect', 'remove'] as const) {
    app.pg.pool.on(event, () => { throw new Error(`${event} listener bug`) })
  }
  app.get('/', async (req) => (await req.db.query('select 1 as n')).rows[0])
  for (let i = 0; i < 3; i++) t.same((await app.inject('/')).json(), { n: 1 }, `request ${i + 1} served (max: 1)`)
  await until(() => app.pg.stats().active === 0, 'returned')
  const logged = lines.filter((line) => line.level === 50).map((line) => line.msg)
  t.ok(logged.includes("fastify-pg-pool: a listener of fastify.pg.pool's 'acquire' event threw; the pool went on"))
  t.ok(logged.includes("fastify-pg-pool: a listener of fastify.pg.pool's 'release' event threw; the pool went on"))
  t.ok(logged.includes("fastify-pg-pool: a listener of fastify.pg.pool's 'connect' event threw; the pool went on"))
})
