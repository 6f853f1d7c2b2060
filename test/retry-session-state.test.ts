/**
 * A retry never changes what a statement may see or do: once the request's session has state
 * (SET ROLE, set_config, search_path, a temporary table), a statement marked `retry` whose
 * connection died fails instead of running again on a fresh connection without that state.
 */
import t from 'tap'
import { buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin(`
  create role tenant_a nologin;
  grant tenant_a to postgres;
  create table secrets (v text);
  insert into secrets values ('for admins only');
  revoke all on secrets from public;
  create schema tenant_a_schema;
  create table tenant_a_schema.secrets (v text);
  insert into tenant_a_schema.secrets values ('tenant a');
  grant usage on schema tenant_a_schema to public;
  grant select on tenant_a_schema.secrets to public`)

async function killBackend (pid: number): Promise<void> {
  await db.admin('select pg_terminate_backend($1)', [pid])
  await until(async () => (await db.admin('select 1 from pg_stat_activity where pid = $1', [pid])).rowCount === 0, 'the backend is gone')
}

/** Each sets state that decides what `select v from secrets` may return. */
const states: Array<{ name: string, sql: string, sees: string }> = [
  { name: 'SET ROLE', sql: 'set role tenant_a', sees: 'permission denied' },
  // (a regression: PostgreSQL ends a -- comment at \r too, and the text check did not)
  { name: 'SET ROLE behind a -- comment ended by \\r', sql: '-- tenant 7\rset role tenant_a', sees: 'permission denied' },
  { name: 'SET search_path', sql: 'set search_path = tenant_a_schema', sees: 'tenant a' },
  { name: 'set_config', sql: "select set_config('search_path', 'tenant_a_schema', false)", sees: 'tenant a' },
  { name: 'a temporary table', sql: "create temp table secrets as select 'temporary' as v", sees: 'temporary' }
]

for (const state of states) {
  t.test(`after ${state.name}, a retry statement whose connection died fails instead of running without it`, async (t) => {
    const app = await buildApp(t, db)
    app.get('/', async (req) => {
      await req.db.query(state.sql)
      const before = await req.db.query('select v from secrets').then((r) => r.rows[0].v, (e: Error) => e.message)
      await killBackend((await req.db.query('select pg_backend_pid() as pid')).rows[0].pid)
      return { before, after: await req.db.query({ text: 'select v from secrets', retry: true }).then((r) => r.rows[0].v, (e: { code: string }) => e.code) }
    })
    const { before, after } = (await app.inject('/')).json()
    t.match(before, state.sees, 'the state decided what the statement saw')
    t.equal(after, 'FST_PG_CONNECTION_LOST', 'not retried: a fresh connection would have returned the admins\' row')
  })
}

t.test('without session state the retry still runs (and the request keeps the new connection)', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    await req.db.query("select 'no state' as v")
    await killBackend((await req.db.query('select pg_backend_pid() as pid')).rows[0].pid)
    return (await req.db.query({ text: 'select v from secrets', retry: true })).rows[0]
  })
  t.same((await app.inject('/')).json(), { v: 'for admins only' })
})

t.test("sessionReset: 'always' trusts no statement's text: after any statement, no retry", async (t) => {
  const route = async (req: { db: import('../src/index.js').RequestDb }): Promise<unknown> => {
    // (a function call could set a role or a setting: text cannot tell)
    await req.db.query("select set_config_like_function from (select 'x' as set_config_like_function) s")
    await killBackend((await req.db.query('select pg_backend_pid() as pid')).rows[0].pid)
    return await req.db.query({ text: 'select 1 as n', retry: true }).then((r) => r.rows[0], (e: { code: string }) => ({ code: e.code }))
  }
  const always = await buildApp(t, db, { sessionReset: 'always' })
  always.get('/', route)
  const auto = await buildApp(t, db)
  auto.get('/', route)
  t.same((await always.inject('/')).json(), { code: 'FST_PG_CONNECTION_LOST' }, "'always': not retried")
  t.same((await auto.inject('/')).json(), { n: 1 }, "'auto': the text shows no state, retried")
})
