/**
 * The `identity` option against real row-level security (test/helpers/tenants.ts: a policy on
 * `app.tenant_id`, the app connected as a role that owns nothing): every statement of a request
 * runs as its role with its settings, on every path (request.db, transactions, the route's,
 * connection(), cursors, ORMs, retry, several databases); nothing of it is left on the
 * connection; what cannot carry it is refused unsent; a failing identity fails the statements
 * before any is sent.
 */
import t from 'tap'
import type { FastifyRequest } from 'fastify'
import type { QueryConfig } from 'pg'
import Cursor from 'pg-cursor'
import { Kysely, PostgresDialect, sql as ksql } from 'kysely'
import { drizzle } from 'drizzle-orm/node-postgres'
import { sql as dsql } from 'drizzle-orm'
import type { PgIdentity } from '../src/index.js'
import { buildApp } from './helpers/app.js'
import { code } from './helpers/ledger.js'
import { setupDatabase } from './helpers/postgres.js'
import { tenants } from './helpers/tenants.js'

const db = await setupDatabase(t)
const tn = await tenants(db)

type Row = Record<string, unknown>
const slug = (what: string): string => what.replace(/[^a-z]+/gi, '-')
const header = (tenant: number | undefined): Record<string, string> => tenant === undefined ? {} : { 'x-tenant': String(tenant) }
const asked = (tenant: number): Row => ({ user: tn.role, tenants: [tenant] })
/** Who a statement ran as, and which tenants' rows it saw. */
const WHO = 'select current_user as user, coalesce(array_agg(distinct tenant_id), \'{}\') as tenants from notes'
const WHO_P = WHO + ' where id > $1'

t.beforeEach(async () => { await db.admin('delete from notes where id > 15') })

t.test('every statement runs as the identity, and nothing of it stays on the connection', async (t) => {
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
  app.get('/', async (req) => {
    const [plain, prepared] = [(await req.db.query(WHO)).rows[0], (await req.db.query(WHO_P, [0])).rows[0]]
    return { plain, prepared, setting: (await req.db.query("select current_setting('app.tenant_id', true) as s")).rows[0]?.s }
  })
  for (const tenant of [2, 3, undefined, 2]) {
    const res = await app.inject({ url: '/', headers: header(tenant) })
    t.equal(res.statusCode, 200)
    if (tenant === undefined) {
      // The connection's own role, which the policy shows nothing.
      t.same(res.json(), { plain: { user: tn.login, tenants: [] }, prepared: { user: tn.login, tenants: [] }, setting: '' }, 'without an identity: the login role, no rows')
    } else {
      t.same(res.json(), { plain: asked(tenant), prepared: asked(tenant), setting: String(tenant) }, `tenant ${tenant}: its rows only, as the role`)
    }
  }
  // The same (only) connection, outside any request.
  const { rows: [after] } = await app.pg.query("select current_user as user, current_setting('app.tenant_id', true) as s, current_setting('role') as r")
  t.same(after, { user: tn.login, s: '', r: 'none' }, 'the session holds neither the role nor the setting')
})

t.test('writes: its own tenant only', async (t) => {
  const app = await buildApp(t, db, { connectionString: tn.url, identity: tn.fromHeader })
  app.post('/:tenant', async (req) => {
    await req.db.query('insert into notes (tenant_id, body) values ($1, $2)', [(req.params as { tenant: string }).tenant, 'written'])
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/2', headers: header(2) })).statusCode, 200)
  const other = await app.inject({ method: 'POST', url: '/3', headers: header(2) })
  t.equal(other.statusCode, 500)
  t.equal(other.json().code, '42501', "another tenant's row violates the policy")
  const none = await app.inject({ method: 'POST', url: '/3' })
  t.equal(none.json().code, '42501', 'without an identity nothing can be written')
  t.same((await db.admin("select tenant_id from notes where body = 'written'")).rows, [{ tenant_id: 2 }])
})

t.test('on every path of the request', async (t) => {
  const app = await buildApp(t, db, { connectionString: tn.url, max: 2, identity: tn.fromHeader })
  const ran: Record<string, (req: FastifyRequest) => Promise<unknown>> = {
    'route transaction': async (req) => [(await req.db.query(WHO)).rows[0], (await req.db.query(WHO_P, [0])).rows[0]],
    'transaction()': async (req) => await req.db.transaction(async (tx) => [
      (await tx.query(WHO)).rows[0],
      await tx.transaction(async (inner) => (await inner.query(WHO_P, [0])).rows[0]),
      (await tx.query(WHO)).rows[0]
    ]),
    'connection()': async (req) => {
      const client = await req.db.connection()
      return [(await client.query(WHO)).rows[0], (await client.query(WHO_P, [0])).rows[0], await new Promise((resolve, reject) => {
        client.query(WHO_P, [0], (error, result) => error ? reject(error) : resolve(result.rows[0]))
      })]
    },
    'connection() in transaction(), its own BEGIN and a cursor': async (req) => await req.db.transaction(async (tx) => {
      const client = await tx.connection()
      const cursor = client.query(new Cursor(WHO))
      const rows = await cursor.read(5)
      await cursor.close()
      await client.query('savepoint s')
      const after = (await client.query(WHO)).rows[0]
      await client.query('rollback to savepoint s')
      return [rows[0], after, (await client.query({ text: WHO, queryMode: 'simple' } as unknown as QueryConfig)).rows[0]]
    }),
    'a cursor in a route transaction, first thing': async (req) => {
      const client = await req.db.connection()
      const cursor = client.query(new Cursor(WHO_P, [0]))
      const rows = await cursor.read(5)
      await cursor.close()
      return [rows[0]]
    },
    'Kysely on request.db.pool': async (req) => {
      const k = new Kysely<unknown>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
      const outside = (await ksql<Row>`select current_user as user, coalesce(array_agg(distinct tenant_id), '{}') as tenants from notes where id > ${0}`.execute(k)).rows[0]
      const inside = await k.transaction().execute(async (trx) => (await ksql<Row>`select current_user as user, coalesce(array_agg(distinct tenant_id), '{}') as tenants from notes`.execute(trx)).rows[0])
      return [outside, inside]
    },
    'drizzle on request.db.pool': async (req) => {
      const d = drizzle(req.db.pool)
      const outside = (await d.execute(dsql`select current_user as user, coalesce(array_agg(distinct tenant_id), '{}') as tenants from notes where id > ${0}`)).rows[0]
      const inside = await d.transaction(async (trx) => (await trx.execute(dsql`select current_user as user, coalesce(array_agg(distinct tenant_id), '{}') as tenants from notes`)).rows[0])
      return [outside, inside]
    }
  }
  for (const [path, handler] of Object.entries(ran)) {
    const transaction = path.includes('route transaction')
    app.get(`/${slug(path)}`, { config: { pgPool: { transaction } } }, async (req) => await handler(req))
  }
  for (const path of Object.keys(ran)) {
    for (const tenant of [1, 4]) {
      const res = await app.inject({ url: `/${slug(path)}`, headers: header(tenant) })
      t.equal(res.statusCode, 200, `${path}: ${res.body.slice(0, 200)}`)
      const seen = (res.json() as Row[]).map((row) => ({ user: row.user, tenants: row.tenants ?? [tenant] }))
      t.same(seen, seen.map(() => asked(tenant)), `${path}, tenant ${tenant}: every statement as the role, on its rows`)
    }
  }
})

t.test('what cannot carry the identity is refused, unsent', async (t) => {
  const app = await buildApp(t, db, { connectionString: tn.url, identity: tn.fromHeader })
  const tries: Record<string, (req: FastifyRequest) => Promise<unknown>> = {
    'a cursor outside a transaction': async (req) => (await req.db.connection()).query(new Cursor("insert into notes (tenant_id, body) values (1, 'unsent') returning id")).read(1),
    'several statements': async (req) => await req.db.query("insert into notes (tenant_id, body) values (1, 'unsent'); select 1"),
    'several statements in a transaction': async (req) => await req.db.transaction(async (tx) => await tx.query("insert into notes (tenant_id, body) values (1, 'unsent'); select 1")),
    'several statements on a client': async (req) => await (await req.db.connection()).query("insert into notes (tenant_id, body) values (1, 'unsent'); select 1"),
    "queryMode: 'simple' outside a transaction": async (req) => await req.db.query({ text: "insert into notes (tenant_id, body) values (1, 'unsent')", queryMode: 'simple' } as never),
    VACUUM: async (req) => await req.db.query('vacuum notes'),
    'CLUSTER of every table': async (req) => await req.db.query('cluster (verbose)'),
    'REINDEX SYSTEM': async (req) => await req.db.query('reindex (verbose) system'),
    'DETACH PARTITION CONCURRENTLY': async (req) => await req.db.query('alter table parted detach partition parted_1 concurrently')
  }
  app.get('/discard-temp', async (req) => (await req.db.query('discard temp')).command)
  // Transaction control runs without it (nothing reads data in it); SET TRANSACTION must come first.
  app.get('/control', async (req) => {
    const client = await req.db.connection()
    await client.query('begin')
    await client.query('set transaction isolation level repeatable read')
    const row = (await client.query(WHO)).rows[0]
    await client.query('commit')
    return [row, (await client.query('show transaction_isolation')).rows[0]]
  })
  for (const [path, handler] of Object.entries(tries)) app.get(`/${slug(path)}`, async (req) => await handler(req))
  for (const path of Object.keys(tries)) {
    const res = await app.inject({ url: `/${slug(path)}`, headers: header(1) })
    t.equal(res.json().code, 'FST_PG_IDENTITY_UNSUPPORTED', path)
  }
  t.same((await db.admin("select * from notes where body = 'unsent'")).rows, [], 'nothing ran')
  const control = await app.inject({ url: '/control', headers: header(5) })
  t.same(control.json(), [asked(5), { transaction_isolation: 'read committed' }])
  // What PostgreSQL runs inside a transaction block is sent with the identity in front.
  t.equal((await app.inject({ url: '/discard-temp', headers: header(5) })).body, 'DISCARD')
})

t.test('the identity function', async (t) => {
  t.test('called once per request and database, on its first statement, sync or async', async (t) => {
    const calls: Array<[string | undefined, string]> = []
    const app = await buildApp(t, db, {
      connectionString: tn.url,
      identity: async (req, name) => {
        calls.push([req.headers['x-tenant'] as string | undefined, name])
        await new Promise((resolve) => setTimeout(resolve, 5))
        return tn.fromHeader(req)
      }
    })
    app.get('/none', async () => 'no statement')
    app.get('/three', async (req, reply) => {
      const rows = [(await req.db.query(WHO)).rows[0], (await req.db.query(WHO_P, [0])).rows[0]]
      reply.raw.once('finish', () => {})
      return rows
    })
    t.equal((await app.inject({ url: '/none', headers: header(1) })).statusCode, 200)
    t.same(calls, [], 'not called for a request that sends nothing')
    const res = await app.inject({ url: '/three', headers: header(3) })
    t.same(res.json(), [asked(3), asked(3)])
    t.same(calls, [['3', 'default']], 'once, told the database')
  })

  t.test('its values: numbers, booleans and bigints as text; several settings; a role alone', async (t) => {
    const app = await buildApp(t, db, { connectionString: tn.url })
    app.get('/', { config: { pgPool: { identity: () => ({ role: tn.role, settings: { 'app.tenant_id': 2, 'app.flag': true, 'app.big': 12345678901234567890n, search_path: 'pg_catalog, public' } }) } } }, async (req) =>
      (await req.db.query("select current_user as user, current_setting('app.tenant_id') t, current_setting('app.flag') f, current_setting('app.big') b, current_setting('search_path') p, (select count(*)::int from notes) n")).rows[0])
    app.get('/role', { config: { pgPool: { identity: () => ({ role: tn.role }) } } }, async (req) => (await req.db.query(WHO)).rows[0])
    app.get('/empty', { config: { pgPool: { identity: () => ({ settings: {} }) } } }, async (req) => (await req.db.query(WHO)).rows[0])
    t.same((await app.inject('/')).json(), { user: tn.role, t: '2', f: 'true', b: '12345678901234567890', p: 'pg_catalog, public', n: 3 })
    t.same((await app.inject('/role')).json(), { user: tn.role, tenants: [] }, 'a role without the setting sees nothing')
    t.same((await app.inject('/empty')).json(), { user: tn.login, tenants: [] }, 'nothing to set: none')
  })

  t.test('a route says otherwise: its own function, or none', async (t) => {
    const app = await buildApp(t, db, { connectionString: tn.url, identity: () => ({ role: tn.role, settings: { 'app.tenant_id': '1' } }) })
    app.get('/plugin', async (req) => (await req.db.query(WHO)).rows[0])
    app.get('/own', { config: { pgPool: { identity: tn.fromHeader } } }, async (req) => (await req.db.query(WHO)).rows[0])
    app.get('/public', { config: { pgPool: { identity: false } } }, async (req) => (await req.db.query(WHO)).rows[0])
    t.same((await app.inject({ url: '/plugin', headers: header(2) })).json(), asked(1))
    t.same((await app.inject({ url: '/own', headers: header(2) })).json(), asked(2))
    t.same((await app.inject({ url: '/public', headers: header(2) })).json(), { user: tn.login, tenants: [] })
  })

  t.test('one that throws fails the statements before any is sent: with its status, or FST_PG_IDENTITY', async (t) => {
    const unauthorized = Object.assign(new Error('who are you?'), { statusCode: 401, code: 'E_AUTH' })
    const app = await buildApp(t, db, { connectionString: tn.url, max: 1 })
    let later: unknown
    app.get('/401', { config: { pgPool: { identity: () => { throw unauthorized } } } }, async (req) => {
      const first = await req.db.query(WHO).catch((error: unknown) => error)
      later = await req.db.query(WHO).catch((error: unknown) => error)
      throw first
    })
    app.get('/async', { config: { pgPool: { identity: async () => { throw new Error('the token store is down') } } } }, async (req) => (await req.db.connection()).query(WHO))
    app.get('/bad', { config: { pgPool: { identity: () => ({ role: 'none' }) } } }, async (req) => await req.db.transaction(async (tx) => await tx.query(WHO)))
    // Not an HTTP status, or not an error: wrapped.
    app.get('/302', { config: { pgPool: { identity: () => { throw Object.assign(new Error('moved'), { statusCode: 302 }) } } } }, async (req) => await req.db.query(WHO))
    const notAnError: unknown = 'no'
    app.get('/string', { config: { pgPool: { identity: () => { throw notAnError } } } }, async (req) => await req.db.query(WHO))
    const res = await app.inject('/401')
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'E_AUTH')
    t.equal(later, unauthorized, 'a later statement fails the same way, unsent')
    const down = await app.inject('/async')
    t.equal(down.statusCode, 500)
    t.equal(down.json().code, 'FST_PG_IDENTITY')
    t.equal((await app.inject('/bad')).json().code, 'FST_PG_IDENTITY')
    t.equal((await app.inject('/302')).json().code, 'FST_PG_IDENTITY')
    t.equal((await app.inject('/string')).json().code, 'FST_PG_IDENTITY')
    t.equal(app.pg.stats().total, 0, 'no connection was ever opened')
  })

  t.test('what it returns is checked', async (t) => {
    const returned: Array<[string, unknown]> = [
      ['a string', 'tenant'],
      ['an array', [tn.role]],
      ['an unknown key', { role: tn.role, tenant: 1 }],
      ['an empty role', { role: '' }],
      ['a role that is not a string', { role: 5 }],
      ['the role none', { role: 'none' }],
      ['a role with a NUL', { role: 'a\0b' }],
      ['settings that are not an object', { settings: 'app.tenant_id=1' }],
      ['settings that are an array', { settings: ['1'] }],
      ['a setting name with a space', { settings: { 'app tenant': '1' } }],
      ['a setting name with a quote', { settings: { "app.t'; drop table notes; --": '1' } }],
      ['the role as a setting', { settings: { role: tn.role } }],
      ['session_authorization as a setting', { settings: { SESSION_AUTHORIZATION: 'postgres' } }],
      ['statement_timeout as a setting', { settings: { statement_timeout: '0' } }],
      ['a missing value', { settings: { 'app.tenant_id': undefined } }],
      ['a null value', { settings: { 'app.tenant_id': null } }],
      ['NaN', { settings: { 'app.tenant_id': Number.NaN } }],
      ['an object value', { settings: { 'app.tenant_id': { id: 1 } } }],
      ['a value with a NUL', { settings: { 'app.tenant_id': '1\0' } }],
      ['settings held by a prototype', { settings: Object.create({ 'app.tenant_id': '1' }) }],
      ['settings of a class', { settings: new (class { get 'app.tenant_id' (): string { return '1' } })() }]
    ]
    const app = await buildApp(t, db, { connectionString: tn.url, identity: (req) => returned[Number(req.headers['x-case'])]![1] as PgIdentity })
    app.get('/', async (req) => (await req.db.query(WHO)).rows[0])
    for (const [i, [what]] of returned.entries()) {
      const res = await app.inject({ url: '/', headers: { 'x-case': String(i) } })
      t.equal(res.json().code, 'FST_PG_IDENTITY', what)
    }
    t.equal((await db.admin('select count(*)::int n from notes')).rows[0].n, 15, 'the table is as it was')
    t.equal(app.pg.stats().total, 0, 'no connection was ever opened')
  })

  t.test('a role the login cannot take fails the statement with the server\'s error; the connection goes on', async (t) => {
    const app = await buildApp(t, db, { connectionString: tn.url, max: 1 })
    app.get('/:role', { config: { pgPool: { identity: (req) => ({ role: (req.params as { role: string }).role, settings: { 'app.tenant_id': '2' } }) } } }, async (req) => {
      const first = await req.db.query(WHO).then((r) => r.rows[0], code)
      return [first, await req.db.query(WHO_P, [0]).then((r) => r.rows[0], code)]
    })
    t.same((await app.inject('/nobody')).json(), ['22023', '22023'], 'role "nobody" does not exist')
    t.same((await app.inject('/postgres')).json(), ['42501', '42501'], 'not a member')
    t.same((await app.inject(`/${tn.role}`)).json(), [asked(2), asked(2)], 'the same connection serves the next request')
    t.equal(app.pg.stats().total, 1)
  })

  t.test('an identity function that is not a function is refused at register and on the route', async (t) => {
    await t.rejects(buildApp(t, db, { connectionString: tn.url, identity: 'tenant' as never }), { code: 'FST_PG_INVALID_OPTION' })
    const app = await buildApp(t, db, { connectionString: tn.url })
    t.throws(() => app.get('/', { config: { pgPool: { identity: { role: 'x' } as never } } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION' })
  })
})

t.test('what has the identity sent just before it: after a route BEGIN, its failure reported, never while something runs', async (t) => {
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
  // A route transaction whose first statement cannot take it in front: the BEGIN goes alone, then the identity.
  app.get('/first-simple', { config: { pgPool: { transaction: true } } }, async (req) => (await req.db.query({ text: WHO, queryMode: 'simple' } as unknown as QueryConfig)).rows[0])
  // The identity sent alone fails (no such role): the statement reports that, not the aborted transaction.
  app.get('/no-role', { config: { pgPool: { identity: () => ({ role: 'no_such_role', settings: { 'app.tenant_id': '1' } }) } } }, async (req) =>
    await req.db.transaction(async (tx) => await tx.query({ text: WHO, queryMode: 'simple' } as unknown as QueryConfig)).catch(code))
  app.get('/fails-itself', async (req) => await req.db.transaction(async (tx) => await tx.query({ text: 'select 1/0', queryMode: 'simple' } as unknown as QueryConfig)).catch(code))
  // A cursor while a statement still runs on the client: the transaction it will meet is not known.
  app.get('/busy', async (req) => await req.db.transaction(async (tx) => {
    const client = await tx.connection()
    const running = client.query('select pg_sleep(0.05)')
    try {
      client.query(new Cursor(WHO))
      return 'sent'
    } catch (error) {
      return [code(error), (error as Error).message.includes('await')]
    } finally {
      await running
    }
  }))
  t.same((await app.inject({ url: '/first-simple', headers: header(2) })).json(), asked(2))
  t.equal((await app.inject('/no-role')).body, '22023')
  t.equal((await app.inject({ url: '/fails-itself', headers: header(2) })).body, '22012', 'a statement that fails after it reports its own error')
  t.same((await app.inject({ url: '/busy', headers: header(2) })).json(), ['FST_PG_IDENTITY_UNSUPPORTED', true])
})

t.test('retry sends the statement again with the identity', async (t) => {
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
  app.get('/', async (req) => {
    await req.db.query('select 1')
    await db.admin('select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1', ['fpp-app'])
    return (await req.db.query({ text: WHO_P, values: [0], retry: true })).rows[0]
  })
  const res = await app.inject({ url: '/', headers: header(4) })
  t.same(res.json(), asked(4))
})

t.test('a statement that fails, and a procedure that commits, leave no identity behind', async (t) => {
  await db.admin(`create or replace procedure commits_inside() language plpgsql as $$ begin commit; insert into notes (tenant_id, body) values (3, 'after commit'); end $$;
    grant execute on procedure commits_inside to ${tn.role}, ${tn.login}`)
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
  app.get('/fail', async (req) => await req.db.query('select 1/0').catch(code))
  app.get('/call', async (req) => await req.db.query('call commits_inside()').catch(code))
  app.get('/who', async (req) => (await req.db.query(WHO)).rows[0])
  t.equal((await app.inject({ url: '/fail', headers: header(3) })).body, '22012')
  t.same((await app.inject('/who')).json(), { user: tn.login, tenants: [] })
  t.equal((await app.inject({ url: '/call', headers: header(3) })).body, '2D000', 'a COMMIT inside cannot end the identity: PostgreSQL refuses it (invalid transaction termination)')
  t.same((await db.admin("select * from notes where body = 'after commit'")).rows, [])
})

t.test('several databases: each its own identity, a route\'s for all, told which', async (t) => {
  const calls: string[] = []
  const app = await buildApp(t, db, { connectionString: tn.url, identity: tn.fromHeader })
  await app.register((await import('../src/index.js')).default, {
    connectionString: tn.url,
    name: 'replica',
    application_name: 'fpp-app',
    identity: () => ({ role: tn.role, settings: { 'app.tenant_id': '5' } })
  })
  app.get('/', async (req) => [(await req.db.query(WHO)).rows[0], (await req.dbs.replica.query(WHO)).rows[0]])
  app.get('/route', { config: { pgPool: { identity: (req, name) => { calls.push(name); return tn.fromHeader(req) } } } }, async (req) => [(await req.db.query(WHO)).rows[0], (await req.dbs.replica.query(WHO)).rows[0]])
  t.same((await app.inject({ url: '/', headers: header(2) })).json(), [asked(2), asked(5)])
  t.same((await app.inject({ url: '/route', headers: header(1) })).json(), [asked(1), asked(1)])
  t.same(calls, ['default', 'replica'])
})

t.test('the identity prepared once per connection, and prepared again after the handler drops it', async (t) => {
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
  app.get('/', async (req) => {
    const before = (await req.db.query(WHO)).rows[0]
    await req.db.query('deallocate all')
    const after = (await req.db.query(WHO_P, [0])).rows[0]
    const inTransaction = await req.db.transaction(async (tx) => {
      await tx.query('deallocate all')
      return (await tx.query(WHO)).rows[0]
    })
    return [before, after, inTransaction, (await req.db.query("select count(*)::int as n from pg_prepared_statements where name like 'fpp_identity_%'")).rows[0].n]
  })
  t.same((await app.inject({ url: '/', headers: header(3) })).json(), [asked(3), asked(3), asked(3), 1])
  t.same((await app.inject({ url: '/', headers: header(4) })).json(), [asked(4), asked(4), asked(4), 1], 'and on the next request')
})

t.test('settings only, no role; a setting picks the schema (a schema per tenant)', async (t) => {
  await db.admin(`create schema if not exists t1; create schema if not exists t2;
    create table if not exists t1.items (name text); create table if not exists t2.items (name text);
    truncate t1.items, t2.items; insert into t1.items values ('one'); insert into t2.items values ('two');
    grant usage on schema t1, t2 to ${tn.login}; grant select on t1.items, t2.items to ${tn.login}`)
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: (req) => ({ settings: { search_path: `t${String(req.headers['x-tenant'])}` } }) })
  app.get('/', async (req) => [(await req.db.query('select name, current_user as user from items')).rows[0], (await req.db.query('select name from items where $1::int = 1', [1])).rows[0]])
  for (const tenant of [1, 2, 1, 2]) {
    const name = tenant === 1 ? 'one' : 'two'
    t.same((await app.inject({ url: '/', headers: header(tenant) })).json(), [{ name, user: tn.login }, { name }], `tenant ${tenant}: its schema, prepared statements too`)
  }
})

t.test('settings read once: an object whose keys change between reads cannot split names from values', async (t) => {
  let reads = 0
  const shifting = new Proxy({}, {
    ownKeys: () => ++reads === 1 ? ['app.tenant_id'] : ['app.tenant_id', 'app.other'],
    getOwnPropertyDescriptor: () => ({ value: '2', enumerable: true, configurable: true }),
    get: () => '2'
  })
  const app = await buildApp(t, db, { connectionString: tn.url, identity: () => ({ role: tn.role, settings: shifting as Record<string, string> }) })
  app.get('/', async (req) => (await req.db.query(WHO)).rows[0])
  t.same((await app.inject('/')).json(), asked(2))
})

declare module '../src/index.js' {
  interface PgDatabases { replica: true }
}
