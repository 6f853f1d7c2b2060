/**
 * Prepared statements by default: a statement with parameters is prepared once per connection
 * and run by name after that, on every path a statement takes (request.db, fastify.pg.query,
 * connection() and pool.connect() clients); each connection keeps at most statementCacheSize of
 * them; a statement the server dropped, or whose result columns changed, is prepared again and
 * run once when nothing else ran in between. Read from the server: pg_prepared_statements of the
 * connection that ran them.
 */
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import type { QueryResult } from 'pg'
import type { PgPoolOptions } from '../src/index.js'
import { buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { until } from './helpers/util.js'

const db = await setupDatabase(t)

interface Prepared { name: string, statement: string, runs: number }

/** The statements the plugin prepared on the connection `query` runs on (protocol-level ones, not PREPARE). */
async function preparedOn (query: (sql: string) => Promise<QueryResult<any>>): Promise<Prepared[]> {
  const { rows } = await query('select name, statement, (generic_plans + custom_plans)::int as runs from pg_prepared_statements where not from_sql order by prepare_time, name')
  return rows
}

/** A DEALLOCATE the plugin cannot see: behind another statement in the same string. */
const UNSEEN_DEALLOCATE = 'select 1; deallocate all'
const BY_ID = 'select $1::int + 1 as n'

/** An app with max 1 (every request on the same connection), and a route listing what is prepared. */
async function oneConnection (t: { teardown (fn: () => unknown): void }, options: PgPoolOptions = {}): Promise<FastifyInstance> {
  const app = await buildApp(t, db, { max: 1, ...options })
  app.get('/prepared', async (req) => await preparedOn((sql) => req.db.query(sql)))
  return app
}
/** Connections the app closed, for any reason. */
const destroyed = (app: FastifyInstance): number => Object.values(app.pg.stats().destroyed).reduce((a, b) => a + b, 0)

t.test('request.db: a statement with parameters is prepared once per connection, then run by name', async (t) => {
  const app = await oneConnection(t)
  app.get('/n', async (req) => (await req.db.query(BY_ID, [Number((req.query as { v: string }).v)])).rows[0])
  for (const v of [1, 2, 3]) t.same((await app.inject(`/n?v=${v}`)).json(), { n: v + 1 }, 'each run answers its own values')
  const prepared = (await app.inject('/prepared')).json() as Prepared[]
  t.equal(prepared.length, 1, 'one statement prepared')
  t.equal(prepared[0]?.statement, BY_ID)
  t.equal(prepared[0]?.runs, 3, 'run three times by name (parsed once)')
  t.match(prepared[0]?.name, /^fpp_[0-9a-z]+$/)
})

t.test('what is sent as given: no parameters, a name of its own, prepare: false on the statement, the route or the plugin', async (t) => {
  const app = await oneConnection(t)
  app.get('/plain', async (req) => (await req.db.query('select 1 as n')).rows[0])
  app.get('/empty', async (req) => (await req.db.query('select 2 as n', [])).rows[0])
  app.get('/own', async (req) => (await req.db.query({ name: 'mine', text: BY_ID, values: [1] })).rows[0])
  app.get('/off', async (req) => (await req.db.query({ text: BY_ID, values: [1], prepare: false })).rows[0])
  app.get('/route', { config: { pgPool: { prepare: false } } }, async (req) => (await req.db.query(BY_ID, [1])).rows[0])
  app.get('/simple', async (req) => (await req.db.query({ text: 'select 3 as n', queryMode: 'simple' } as never)).rows[0])
  for (const path of ['/plain', '/empty', '/own', '/off', '/route', '/simple']) t.equal((await app.inject(path)).statusCode, 200, path)
  t.same(((await app.inject('/prepared')).json() as Prepared[]).map((p) => p.name), ['mine'], "only the user's own named statement is prepared")

  const off = await oneConnection(t, { prepare: false })
  off.get('/n', async (req) => (await req.db.query(BY_ID, [1])).rows[0])
  off.get('/on', { config: { pgPool: { prepare: true } } }, async (req) => (await req.db.query('select $1::int as on_route', [1])).rows[0])
  t.equal((await off.inject('/n')).statusCode, 200)
  t.equal((await off.inject('/on')).statusCode, 200)
  t.same(((await off.inject('/prepared')).json() as Prepared[]).map((p) => p.statement), ['select $1::int as on_route'], "prepare: false on the plugin; a route's true wins")
})

t.test('every path: fastify.pg.query, connection() and pool.connect() clients (promise and callback forms), request.db.pool', async (t) => {
  const app = await oneConnection(t)
  app.get('/client', async (req) => {
    const client = await req.db.connection()
    const a = await client.query('select $1::int as via_client', [1])
    const b = await new Promise<QueryResult<any>>((resolve, reject) => client.query('select $1::int as via_callback', [2], (e, r) => e ? reject(e) : resolve(r)))
    const c = await req.db.pool.query({ text: 'select $1::int as via_pool_view', values: [3] })
    return [a.rows[0], b.rows[0], c.rows[0]]
  })
  t.same((await app.inject('/client')).json(), [{ via_client: 1 }, { via_callback: 2 }, { via_pool_view: 3 }])
  t.same((await app.pg.query('select $1::int as via_fastify_pg', [4])).rows, [{ via_fastify_pg: 4 }])
  const client = await app.pg.connect()
  t.same((await client.query('select $1::int as via_connect', [5])).rows, [{ via_connect: 5 }])
  client.release()
  const statements = ((await app.inject('/prepared')).json() as Prepared[]).map((p) => p.statement).sort()
  t.same(statements, ['select $1::int as via_callback', 'select $1::int as via_client', 'select $1::int as via_connect', 'select $1::int as via_fastify_pg', 'select $1::int as via_pool_view'])
})

t.test('statementCacheSize: the least recently used is evicted, and closed on the server with the statement that evicted it', async (t) => {
  const app = await oneConnection(t, { statementCacheSize: 2 })
  let during: Prepared[] = []
  app.get('/three', async (req) => {
    await req.db.query('select $1::int as a', [1])
    await req.db.query('select $1::int as b', [1])
    await req.db.query('select $1::int as a', [1]) // a is now the most recently used
    await req.db.query('select $1::int as c', [1]) // evicts b
    during = await preparedOn((sql) => req.db.query(sql))
    return 'ok'
  })
  t.equal((await app.inject('/three')).statusCode, 200)
  t.same(during.map((p) => p.statement).sort(), ['select $1::int as a', 'select $1::int as c'], 'b closed at once, within the request')
  t.equal((await app.inject('/three')).body, 'ok', 'b prepared again when used again')
  t.equal(destroyed(app), 0, 'the connection was kept')
})

t.test('the server never holds more than statementCacheSize, however long the checkout (query builders: IN lists of every length)', async (t) => {
  const app = await oneConnection(t, { statementCacheSize: 10 })
  app.get('/many', async (req) => {
    let most = 0
    for (let n = 1; n <= 300; n++) {
      const list = Array.from({ length: n }, (_, i) => `$${i + 1}`).join(',')
      await req.db.query(`select count(*) from generate_series(1, 3) g where g in (${list})`, Array.from({ length: n }, (_, i) => i))
      if (n % 50 === 0) most = Math.max(most, (await preparedOn((sql) => req.db.query(sql))).length)
    }
    return { most }
  })
  t.same((await app.inject('/many')).json(), { most: 10 })
  const client = await app.pg.connect()
  t.teardown(() => client.release())
  for (let n = 1; n <= 100; n++) await client.query(`select $1::int + ${n} as n`, [n])
  const { rows: [row] } = await client.query('select count(*)::int as n from pg_prepared_statements where not from_sql')
  t.equal(row.n, 10, 'on a pool.connect() client held throughout')
})

t.test('a statement whose Parse failed (never prepared) is evicted without harm (closing one that does not exist is no error)', async (t) => {
  const app = await oneConnection(t, { statementCacheSize: 1 })
  app.get('/bad', async (req) => {
    const error = await req.db.query('select $1::int from no_such_table_anywhere', [1]).catch((e: unknown) => e)
    return { code: (error as { code?: string }).code, next: (await req.db.query('select $1::int as n', [7])).rows[0] }
  })
  t.same((await app.inject('/bad')).json(), { code: '42P01', next: { n: 7 } })
  await until(() => app.pg.stats().idle === 1, 'the connection is back')
  t.equal(destroyed(app), 0, 'not destroyed')
  t.same(((await app.inject('/prepared')).json() as Prepared[]).map((p) => p.statement), ['select $1::int as n'])
})

t.test('a DEALLOCATE ALL the plugin sees: every statement it prepared is prepared again, none fails', async (t) => {
  const app = await oneConnection(t)
  app.get('/seen', async (req) => {
    await req.db.query(BY_ID, [1])
    await req.db.query('deallocate all')
    const again = (await req.db.query(BY_ID, [2])).rows[0]
    const inTransaction = await req.db.transaction(async (tx) => {
      await tx.query('/* the handler */ DEALLOCATE ALL')
      return (await tx.query(BY_ID, [3])).rows[0]
    })
    const client = await req.db.connection()
    await client.query('deallocate all')
    const queued = await Promise.all([client.query(BY_ID, [4]), client.query(BY_ID, [5])])
    return [again, inTransaction, ...queued.map((r) => r.rows[0])]
  })
  t.same((await app.inject('/seen')).json(), [{ n: 3 }, { n: 4 }, { n: 5 }, { n: 6 }])
})

t.test('dropped by the server (26000) outside a transaction: prepared again and run once, transparently', async (t) => {
  const app = await oneConnection(t)
  app.get('/dropped', async (req) => {
    const first = (await req.db.query(BY_ID, [1])).rows[0]
    await req.db.query(UNSEEN_DEALLOCATE)
    const again = (await req.db.query(BY_ID, [2])).rows[0]
    // Through a connection() client, in both forms.
    const client = await req.db.connection()
    await client.query(UNSEEN_DEALLOCATE)
    const viaClient = (await client.query(BY_ID, [3])).rows[0]
    await client.query(UNSEEN_DEALLOCATE)
    const viaCallback = await new Promise((resolve, reject) => client.query(BY_ID, [4], (e, r) => e ? reject(e) : resolve(r.rows[0])))
    return [first, again, viaClient, viaCallback]
  })
  t.same((await app.inject('/dropped')).json(), [{ n: 2 }, { n: 3 }, { n: 4 }, { n: 5 }])
})

t.test('dropped by the server, with a statement queued behind it on a connection() client: not sent again (it would overtake it); the one behind is prepared again', async (t) => {
  const app = await oneConnection(t)
  app.get('/queued', async (req) => {
    const client = await req.db.connection()
    await client.query(BY_ID, [1])
    await client.query(UNSEEN_DEALLOCATE)
    const both = await Promise.allSettled([client.query(BY_ID, [2]), client.query(BY_ID, [3])])
    const after = (await client.query(BY_ID, [4])).rows[0]
    return { codes: both.map((r) => r.status === 'rejected' ? (r.reason as { code?: string }).code : 'ran'), after }
  })
  // (The second was still in pg's queue when the first failed: pg, told the name is gone, parses it.)
  t.same((await app.inject('/queued')).json(), { codes: ['26000', 'ran'], after: { n: 5 } })
})

t.test('dropped by the server inside a transaction: the error is the server’s (the transaction is aborted); the next statement prepares it again', async (t) => {
  const app = await oneConnection(t)
  app.get('/in-tx', async (req) => {
    await req.db.query(BY_ID, [1])
    const error = await req.db.transaction(async (tx) => {
      await tx.query(UNSEEN_DEALLOCATE)
      await tx.query(BY_ID, [2])
    }).catch((e: unknown) => e)
    const after = (await req.db.query(BY_ID, [3])).rows[0]
    return { code: (error as { code?: string }).code, after }
  })
  t.same((await app.inject('/in-tx')).json(), { code: '26000', after: { n: 4 } })
})

t.test('result columns changed by ALTER TABLE (0A000): prepared again and run once outside a transaction; the old one is closed', async (t) => {
  await db.admin('drop table if exists prep_alter; create table prep_alter (id int primary key, a int); insert into prep_alter values (1, 10)')
  t.teardown(() => db.admin('drop table if exists prep_alter'))
  const app = await oneConnection(t)
  app.get('/row', async (req) => (await req.db.query('select * from prep_alter where id = $1', [1])).rows[0])
  app.get('/row-in-tx', async (req) => {
    const error = await req.db.transaction(async (tx) => await tx.query('select * from prep_alter where id = $1', [1])).catch((e: unknown) => e)
    return { code: (error as { code?: string }).code, routine: (error as { routine?: string }).routine }
  })
  t.same((await app.inject('/row')).json(), { id: 1, a: 10 })
  await db.admin('alter table prep_alter add column b int default 5')
  t.same((await app.inject('/row')).json(), { id: 1, a: 10, b: 5 }, 'the new column, without an error')
  await db.admin('alter table prep_alter add column c int default 6')
  t.same((await app.inject('/row-in-tx')).json(), { code: '0A000', routine: 'RevalidateCachedQuery' }, "in a transaction: the server's error")
  t.same((await app.inject('/row')).json(), { id: 1, a: 10, b: 5, c: 6 }, 'the next request prepares it again')
  await until(() => app.pg.stats().idle === 1, 'the connection is back')
  const prepared = (await app.inject('/prepared')).json() as Prepared[]
  t.equal(prepared.filter((p) => p.statement.includes('prep_alter')).length, 1, 'the stale ones were closed')
  t.equal(destroyed(app), 0)
})

t.test('a session reset (DISCARD ALL) drops them: the next request prepares them again', async (t) => {
  const app = await oneConnection(t)
  app.get('/n', async (req) => (await req.db.query(BY_ID, [1])).rows[0])
  app.get('/dirty', async (req) => { await req.db.query("set application_name = 'changed'"); return (await req.db.query(BY_ID, [2])).rows[0] })
  t.same((await app.inject('/n')).json(), { n: 2 })
  t.same((await app.inject('/dirty')).json(), { n: 3 })
  t.same((await app.inject('/n')).json(), { n: 2 }, 'after DISCARD ALL')
  const prepared = (await app.inject('/prepared')).json() as Prepared[]
  t.equal(prepared.length, 1)
  t.equal(prepared[0]?.runs, 1, 'prepared anew after the reset')
})

t.test("with a route's statement timeout (sent in front of the statement): prepared, and timed", async (t) => {
  const app = await oneConnection(t)
  app.get('/timed', { config: { pgPool: { statementTimeoutMs: 50 } } }, async (req) => {
    const ok = (await req.db.query(BY_ID, [1])).rows[0]
    const again = (await req.db.query(BY_ID, [2])).rows[0]
    const slow = await req.db.query('select pg_sleep($1)', [1]).catch((e: unknown) => (e as { code?: string }).code)
    return { ok, again, slow }
  })
  t.same((await app.inject('/timed')).json(), { ok: { n: 2 }, again: { n: 3 }, slow: '57014' })
  const prepared = ((await app.inject('/prepared')).json() as Prepared[]).find((p) => p.statement === BY_ID)
  t.equal(prepared?.runs, 2)
})

t.test('refused: prepare with pgbouncer, a cache size below 1, a route prepare that is not a boolean', async (t) => {
  const Fastify = (await import('fastify')).default
  const pgPool = (await import('../src/index.js')).default
  for (const [options, key] of [[{ pgbouncer: true, prepare: true }, 'prepare'], [{ statementCacheSize: 0 }, 'statementCacheSize'], [{ statementCacheSize: 1.5 }, 'statementCacheSize']] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(pgPool, { connectionString: db.url, ...options }) }, { code: 'FST_PG_INVALID_OPTION', message: new RegExp(`\`${key}\``) })
  }
  const app = await buildApp(t, db)
  t.throws(() => app.get('/x', { config: { pgPool: { prepare: 'yes' as never } } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message: /config\.pgPool\.prepare/ })
})
