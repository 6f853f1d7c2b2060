/**
 * `statementTimeoutMs`, plugin-wide (a connection parameter) and per route (sent with each
 * statement, local to its transaction), directly on PostgreSQL. PgBouncer: pgbouncer.test.ts.
 */
import t from 'tap'
import { assertReturned, buildApp } from './helpers/app.js'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'

const db = await setupDatabase(t)
const setting = "select current_setting('statement_timeout') as v"

/** Runs `fn` and returns its error's code, and how long it took. */
async function timed (fn: () => Promise<unknown>): Promise<{ code: unknown, ms: number }> {
  const started = Date.now()
  const code = await fn().then(() => 'ok', (error: { code?: unknown }) => error.code)
  return { code, ms: Date.now() - started }
}

t.test('plugin-wide: a connection parameter, for every way of querying', async (t) => {
  const app = await buildApp(t, db, { statementTimeoutMs: 200 })
  app.get('/', async (req) => {
    const client = await req.db.connection()
    return {
      v: (await req.db.query(setting)).rows[0].v,
      db: await timed(() => req.db.query('select pg_sleep(1)')),
      client: await timed(() => client.query('select pg_sleep(1)'))
    }
  })
  const res = (await app.inject('/')).json()
  t.equal(res.v, '200ms')
  for (const way of ['db', 'client'] as const) {
    t.equal(res[way].code, '57014', `${way}: cancelled`)
    t.ok(res[way].ms >= 190 && res[way].ms < 900, `${way}: after ${res[way].ms} ms`)
  }
  t.equal((await timed(() => app.pg.query('select pg_sleep(1)'))).code, '57014', 'fastify.pg.query')
  const client = await app.pg.pool.connect()
  t.equal((await timed(() => client.query('select pg_sleep(1)'))).code, '57014', 'pool.connect()')
  client.release()
})

t.test("a route's own timeout travels with each statement and leaves nothing behind", async (t) => {
  const app = await buildApp(t, db, { max: 1, statementTimeoutMs: 200 })
  app.get('/long', { config: { pgPool: { statementTimeoutMs: 1500 } } }, async (req) => {
    await req.db.query('select pg_sleep(0.4)')
    await req.db.query('select pg_sleep($1)', [0.3])
    return { v: (await req.db.query(setting)).rows[0].v, pid: (await req.db.query('select pg_backend_pid() as pid')).rows[0].pid }
  })
  app.get('/none', { config: { pgPool: { statementTimeoutMs: false } } }, async (req) => (await req.db.query(setting)).rows[0])
  app.get('/short', { config: { pgPool: { statementTimeoutMs: 100 } } }, async (req) => ({
    text: await timed(() => req.db.query('select pg_sleep(1)')),
    values: await timed(() => req.db.query('select pg_sleep($1)', [1]))
  }))
  app.get('/plain', async (req) => ({ v: (await req.db.query(setting)).rows[0].v, pid: (await req.db.query('select pg_backend_pid() as pid')).rows[0].pid }))

  const long = (await app.inject('/long')).json()
  t.equal(long.v, '1500ms', 'statements ran under the route\'s timeout')
  t.same((await app.inject('/none')).json(), { v: '0' }, 'false: none')
  const short = (await app.inject('/short')).json()
  for (const form of ['text', 'values'] as const) {
    t.equal(short[form].code, '57014', `${form}: cancelled`)
    t.ok(short[form].ms >= 90 && short[form].ms < 800, `${form}: after ${short[form].ms} ms`)
  }
  const plain = (await app.inject('/plain')).json()
  t.same(plain, { v: '200ms', pid: long.pid }, 'the same backend is back to the plugin-wide value')
  await assertReturned(t, app, db)
})

t.test('inside transactions: the first statement carries it; after a rollback to a savepoint it is sent again', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', { config: { pgPool: { statementTimeoutMs: 200 } } }, async (req) => {
    const seen: Record<string, unknown> = {}
    seen.outcome = await req.db.transaction(async (tx) => {
      await tx.query('select 1')
      await tx.query('savepoint s')
      await tx.query('select 2') // carries the timeout again (after transaction control)...
      await tx.query('rollback to savepoint s') // ...which this undoes
      seen.inTx = (await tx.query(setting)).rows[0].v
      seen.slow = await timed(() => tx.query('select pg_sleep(1)'))
      return 'committed'
    }).catch((error: { code?: unknown }) => error.code)
    return seen
  })
  const res = (await app.inject('/')).json()
  t.equal(res.inTx, '200ms', 'set again after the rollback to the savepoint')
  t.equal(res.slow.code, '57014')
  t.equal(res.outcome, 'FST_PG_TRANSACTION_ABORTED', 'the cancelled statement aborted the transaction: not reported as committed')
  await assertReturned(t, app, db)
})

t.test('every statement form still answers as without a timeout', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const route = { config: { pgPool: { statementTimeoutMs: 5000 } } }
  app.get('/', route, async (req) => {
    const multi = await req.db.query('select 1 as a; select 2 as b') as unknown as Array<{ rows: unknown[] }>
    const named = { name: 'st-named', text: 'select $1::int + 1 as n', values: [1] }
    const first = await req.db.query(named)
    const again = await req.db.query(named)
    const bad = await req.db.query({ name: 'st-bad', text: 'select from nowhere_at_all' }).catch((e: { code: string }) => e.code)
    const fixed = await req.db.query({ name: 'st-bad', text: 'select from nowhere_at_all' }).catch((e: { code: string }) => e.code)
    const conflict = await req.db.query({ name: 'st-named', text: 'select 2' }).catch((e: Error) => e.message)
    const notArray = await req.db.query({ text: 'select $1::int as n', values: 5 as never }).catch((e: Error) => e.message)
    const noText = await req.db.query({} as never).catch((e: Error) => e.message)
    return {
      multi: multi.map((r) => r.rows),
      first: first.rows,
      again: again.rows,
      arrays: (await req.db.query({ text: 'select 1 as a, 2 as b', rowMode: 'array' } as never)).rows,
      arraysWithValues: (await req.db.query({ text: 'select $1::int as a', values: [3], rowMode: 'array' } as never)).rows,
      empty: (await req.db.query('')).command ?? null,
      insert: (await req.db.query('create temp table if not exists st_scratch (x int); insert into st_scratch values (1), (2)') as unknown as Array<{ rowCount: number }>)[1]?.rowCount,
      bad,
      fixed,
      conflict,
      notArray,
      noText
    }
  })
  const res = (await app.inject('/')).json()
  t.same(res.multi, [[{ a: 1 }], [{ b: 2 }]], 'multi-statement text: an array of results')
  t.same(res.first, [{ n: 2 }])
  t.same(res.again, [{ n: 2 }], 'a named statement, prepared once, runs again')
  t.same(res.arrays, [[1, 2]])
  t.same(res.arraysWithValues, [[3]])
  t.equal(res.empty, null)
  t.equal(res.insert, 2)
  t.equal(res.bad, '42P01')
  t.equal(res.fixed, '42P01', 'a named statement that failed to parse is not recorded as prepared')
  t.match(res.conflict, /Prepared statements must be unique/)
  t.match(res.notArray, /Query values must be an array/)
  t.match(res.noText, /must have either text or a name/)
  await assertReturned(t, app, db)
})

t.test("a statement's own query_timeout still applies under a route timeout", async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', { config: { pgPool: { statementTimeoutMs: 5000 } } }, async (req) => (
    await req.db.query({ text: 'select pg_sleep(1)', query_timeout: 100 } as never).catch((e: Error & { code: string }) => ({ code: e.code, cause: (e.cause as Error).message }))
  ))
  t.same((await app.inject('/')).json(), { code: 'FST_PG_CONNECTION_LOST', cause: 'Query read timeout' })
  await assertReturned(t, app, db)
})

t.test('bad values: coded errors at register time', async (t) => {
  for (const statementTimeoutMs of [-1, 1.5, '100', 2 ** 31]) {
    await t.rejects(buildApp(t, db, { statementTimeoutMs: statementTimeoutMs as never }), { code: 'FST_PG_INVALID_OPTION', message: /statementTimeoutMs/ })
  }
  await t.rejects(buildApp(t, db, { statementTimeoutMs: 100, statement_timeout: 100 }), { code: 'FST_PG_INVALID_OPTION', message: /statement_timeout.*statementTimeoutMs/ })
  const app = await buildApp(t, db, { statement_timeout: 300 })
  t.same((await app.pg.query(setting)).rows, [{ v: '300ms' }], "pg's own statement_timeout alone still works")
})

t.test('the connection dies before the timeout is answered: the named statement is not recorded as prepared', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, max: 1, pingIdleMs: false })
  const named = { name: 'st-dies', text: 'select $1::int as n', values: [7] }
  app.get('/', { config: { pgPool: { statementTimeoutMs: 5000 } } }, async (req) => (await req.db.query(named)).rows[0])
  app.get('/warm', async (req) => (await req.db.query('select 1 as n')).rows[0])
  t.equal((await app.inject('/warm')).statusCode, 200)
  proxy.forget()
  t.equal((await app.inject('/')).statusCode, 500, 'the reset reached the statement')
  t.same((await app.inject('/')).json(), { n: 7 }, 'on a fresh connection it runs')
})

t.test('statements that must come first in a transaction are never prefixed; error positions point into the statement', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', { config: { pgPool: { statementTimeoutMs: 5000 } } }, async (req) => {
    const iso = await req.db.transaction(async (tx) => {
      await tx.query('set transaction isolation level serializable')
      return (await tx.query("select current_setting('transaction_isolation') as v, current_setting('statement_timeout') as t")).rows[0]
    })
    await req.db.query('/* app */ begin isolation level repeatable read')
    const commented = (await req.db.query("select current_setting('transaction_isolation') as v")).rows[0].v
    await req.db.query('commit')
    const position = await req.db.query('select nosuchcol from pg_class').catch((e: { position: string }) => e.position)
    return { iso, commented, position }
  })
  t.same((await app.inject('/')).json(), { iso: { v: 'serializable', t: '5s' }, commented: 'repeatable read', position: '8' })
})

t.test('a statement run by name alone (prepared earlier) carries the timeout too', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', { config: { pgPool: { statementTimeoutMs: 150 } } }, async (req) => {
    await req.db.query({ name: 'st-sleep', text: 'select pg_sleep($1)', values: [0] })
    // pg sends Bind only: the statement exists on this connection.
    return await req.db.query({ name: 'st-sleep', values: [1] } as never).then(() => 'ran', (e: { code: string }) => e.code)
  })
  t.equal((await app.inject('/')).body, '57014')
})

t.test('a value that fails to serialise: one answer, and the next statement sees the true transaction state', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const bad = { toPostgres: () => { throw new Error('cannot serialise') } }
  app.get('/', async (req) => {
    await req.db.query('begin')
    const results = await Promise.allSettled([
      req.db.query('select $1::text', [bad]),
      req.db.query('commit'),
      req.db.query('select 1 as x')
    ])
    return results.map((r) => r.status === 'fulfilled' ? r.value.command : (r.reason as Error).message)
  })
  t.same((await app.inject('/')).json(), ['cannot serialise', 'COMMIT', 'SELECT'])
  await assertReturned(t, app, db)
})

t.test('a route timeout leaves out what PostgreSQL refuses inside a transaction block (25001), and only that', async (t) => {
  await db.admin('create table if not exists blockless (n int)')
  const app = await buildApp(t, db, { max: 1 })
  const timed = { config: { pgPool: { statementTimeoutMs: 5000 } } }
  const statements = [
    'vacuum blockless',
    'discard all',
    'cluster',
    'cluster verbose',
    'create index concurrently blockless_n on blockless (n)',
    'reindex (concurrently) table blockless',
    'drop index concurrently blockless_n',
    'alter system reset work_mem',
    'create database fpp_blockless',
    'drop database fpp_blockless'
  ]
  for (const [i, sql] of statements.entries()) {
    app.get(`/${i}`, timed, async (req) => (await req.db.query(sql)).command)
  }
  // Everything else still carries it: an ALTER TABLE, a CREATE TABLE ... AS that sleeps past it.
  app.get('/alter', timed, async (req) => (await req.db.query('alter table blockless add column if not exists m int')).command)
  app.get('/slow', { config: { pgPool: { statementTimeoutMs: 50 } } }, async (req) => (
    await req.db.query('create table blockless_slow as select 1 as s from pg_sleep(0.5)').catch((e: { code: string }) => ({ code: e.code }))
  ))
  for (const [i, sql] of statements.entries()) {
    const res = await app.inject(`/${i}`)
    t.equal(res.statusCode, 200, `${sql}: ${res.statusCode === 200 ? 'ran' : res.body}`)
  }
  t.equal((await app.inject('/alter')).statusCode, 200)
  t.same((await app.inject('/slow')).json(), { code: '57014' }, 'cancelled by the timeout it carried')
  await assertReturned(t, app, db)
})
