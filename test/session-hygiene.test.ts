/**
 * Session hygiene: whatever a request leaves on its session is gone before the next request
 * gets the same backend (forced with max: 1). Under RLS, a leaked SET ROLE or tenant setting is
 * a cross-tenant leak.
 */
import t from 'tap'
import { assertReturned, buildApp } from './helpers/app.js'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create role tenant_reader nologin')
await db.admin('create schema elsewhere')
await db.admin('grant tenant_reader to postgres')

interface Case {
  name: string
  change: string
  /** One row, one column `v`: what the next request sees. */
  probe: string
  clean: unknown
}

const cases: Case[] = [
  { name: 'SET', change: "set statement_timeout = '1234ms'", probe: "select current_setting('statement_timeout') as v", clean: '0' },
  { name: 'SET ROLE', change: 'set role tenant_reader', probe: 'select current_user::text as v', clean: 'postgres' },
  { name: 'SET search_path', change: 'set search_path = elsewhere', probe: "select current_setting('search_path') as v", clean: '"$user", public' },
  { name: 'set_config(..., false)', change: "select set_config('app.tenant_id', '42', false)", probe: "select coalesce(current_setting('app.tenant_id', true), '') as v", clean: '' },
  { name: 'CREATE TEMP TABLE', change: 'create temp table scratch (x int)', probe: "select to_regclass('pg_temp.scratch') is null as v", clean: true },
  { name: 'LISTEN', change: 'listen tenant_events', probe: 'select count(*)::int as v from pg_listening_channels()', clean: 0 },
  { name: 'pg_advisory_lock', change: 'select pg_advisory_lock(777)', probe: "select count(*)::int as v from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()", clean: 0 },
  { name: 'PREPARE', change: 'prepare leftover as select 1', probe: 'select count(*)::int as v from pg_prepared_statements', clean: 0 },
  // Regressions (found by an adversarial pass): spellings of the same state the text check missed.
  // PostgreSQL ends a -- comment at \r as well as \n.
  { name: 'SET ROLE after a -- comment ended by \\r', change: '-- tenant 7\rset role tenant_reader', probe: 'select current_user::text as v', clean: 'postgres' },
  { name: 'a temporary table made as pg_temp.name', change: 'create table pg_temp.scratch (x int)', probe: "select to_regclass('pg_temp.scratch') is null as v", clean: true },
  { name: 'a temporary table made by SELECT INTO TEMP', change: 'select 1 as x into temp scratch', probe: "select to_regclass('pg_temp.scratch') is null as v", clean: true },
  { name: 'CREATE TEMP RECURSIVE VIEW', change: 'create temp recursive view scratch (n) as values (1)', probe: "select to_regclass('pg_temp.scratch') is null as v", clean: true },
  { name: 'a temporary function (pg_temp.f)', change: 'create function pg_temp.tenant() returns int language sql as $$ select 7 $$', probe: "select count(*)::int as v from pg_proc where proname = 'tenant' and pronamespace = pg_my_temp_schema()", clean: 0 }
]

for (const c of cases) {
  t.test(`${c.name}: the next request on the same backend sees a clean session`, async (t) => {
    const app = await buildApp(t, db, { max: 1 })
    app.get('/change', async (req) => {
      await req.db.query(c.change)
      return (await req.db.query('select pg_backend_pid() as pid')).rows[0]
    })
    app.get('/probe', async (req) => {
      const { rows: [{ pid }] } = await req.db.query('select pg_backend_pid() as pid')
      return { pid, v: (await req.db.query(c.probe)).rows[0].v }
    })
    const changed = (await app.inject('/change')).json()
    await assertReturned(t, app, db)
    const probed = (await app.inject('/probe')).json()
    t.equal(probed.pid, changed.pid, 'the same backend')
    t.same(probed.v, c.clean)
  })
}

t.test('through connection() and pool.connect() clients too', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/change', async (req) => {
    const client = await req.db.connection()
    await client.query('set role tenant_reader')
    return 'ok'
  })
  await app.inject('/change')
  await assertReturned(t, app, db)
  t.same((await app.pg.query('select current_user::text as v')).rows, [{ v: 'postgres' }])
  const client = await app.pg.pool.connect()
  await client.query("select set_config('app.tenant_id', '7', false)")
  client.release()
  await assertReturned(t, app, db)
  t.same((await app.pg.query("select coalesce(current_setting('app.tenant_id', true), '') as v")).rows, [{ v: '' }])
})

t.test('named prepared statements keep working across a reset (pg\'s cache stays truthful)', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const named = { name: 'tenant_count', text: 'select 41 + 1 as v' }
  app.get('/', async (req) => {
    const { rows } = await req.db.query(named)
    await req.db.query("set application_name = 'changed'") // forces a reset on return
    return rows[0]
  })
  for (let i = 0; i < 3; i++) t.same((await app.inject('/')).json(), { v: 42 }, `request ${i + 1}`)
})

t.test("sessionReset: 'always' and false", async (t) => {
  const always = await buildApp(t, db, { max: 1, sessionReset: 'always' })
  await always.pg.query({ name: 'kept', text: 'select 1' })
  t.same((await always.pg.query('select count(*)::int as n from pg_prepared_statements')).rows, [{ n: 0 }], 'reset after every checkout')
  const never = await buildApp(t, db, { max: 1, sessionReset: false })
  await never.pg.query('set search_path = elsewhere')
  t.same((await never.pg.query("select current_setting('search_path') as v")).rows, [{ v: 'elsewhere' }], 'left alone')
})

t.test('a reset that cannot complete destroys the connection', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { max: 1, connectionString: url, pingTimeoutMs: 200 })
  const client = await app.pg.pool.connect()
  await client.query('listen doomed')
  proxy.blackhole() // the DISCARD ALL on return will get no answer
  client.release()
  await until(() => app.pg.stats().total === 0, 'the connection is destroyed, not pooled')
  t.same((await app.pg.query('select 1 as n')).rows, [{ n: 1 }], 'a new connection serves')
})

t.test("what onConnect set survives a reset: it runs again after DISCARD ALL (a 'connect' listener's settings would not)", async (t) => {
  let calls = 0
  const app = await buildApp(t, db, {
    max: 1,
    onConnect: async (client) => {
      calls++
      await client.query('set search_path = elsewhere, public')
      // Prepared again after each reset: pg must not believe it still exists on the server.
      await client.query({ name: 'on-connect-probe', text: 'select 1 as one' })
    }
  })
  app.get('/dirty', async (req) => (await req.db.query("select set_config('app.tenant_id', '42', false) as v")).rows[0])
  app.get('/probe', async (req) => (await req.db.query("select current_setting('search_path') as path, coalesce(current_setting('app.tenant_id', true), '') as tenant")).rows[0])
  await app.inject('/dirty')
  t.same((await app.inject('/probe')).json(), { path: 'elsewhere, public', tenant: '' }, "the request's state is gone, onConnect's is back")
  t.equal(calls, 2, 'once when opened, once after the reset')
  await app.inject('/dirty')
  t.equal(app.pg.stats().destroyed.error, 0, 'its named statement was prepared again without a clash')
  await assertReturned(t, app, db)
})
