/**
 * What `sessionReset: 'auto'` reads from a statement's text: every form that leaves an object
 * in the session's temporary schema (which comes first on search_path, so a temporary
 * `accounts` shadows `public.accounts`) resets the session before the next request; ordinary
 * statements, however much they look like one, cost no reset. Behind PgBouncer the same
 * reading refuses session state outside a transaction.
 */
import t from 'tap'
import { assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'

const db = await setupDatabase(t)
await db.admin("create table accounts (name text); insert into accounts values ('public')")
await db.admin('create table temperature (temp numeric, temporary text); create table temp (v int); create table x (a int)')
await db.admin('create table settings (key text primary key, value text)')
await db.admin('create role tenant_reader nologin; grant tenant_reader to postgres')

/** Objects in this session's temporary schema (0 when it has none). */
const TEMP_OBJECTS = `select ((select count(*) from pg_class where relnamespace = pg_my_temp_schema())
  + (select count(*) from pg_proc where pronamespace = pg_my_temp_schema())
  + (select count(*) from pg_type where typnamespace = pg_my_temp_schema()))::int as v`

interface Case {
  name: string
  /** `$nsp` stands for this backend's own temporary schema, pg_temp_N. */
  change: string
  /** One row, one column `v`: what the next request sees. */
  probe?: string
  clean?: unknown
}

const cases: Case[] = [
  { name: 'SELECT INTO TEMP', change: 'select 1 as x into temp scratch' },
  { name: 'SELECT INTO TEMPORARY TABLE', change: 'select 1 as x into temporary table scratch' },
  { name: 'SELECT INTO LOCAL TEMP', change: 'select 1 as x into local temp scratch' },
  { name: 'WITH ... SELECT INTO TEMP', change: 'with w as (select 1 as x) select * into temp scratch from w' },
  { name: 'EXPLAIN ANALYZE SELECT INTO TEMP', change: 'explain analyze select 1 as x into temp scratch' },
  { name: 'CREATE TABLE pg_temp.x', change: 'create table pg_temp.scratch (x int)' },
  { name: 'CREATE TABLE "pg_temp" . x', change: 'create table "pg_temp" . scratch (x int)' },
  { name: 'CREATE TABLE pg_temp_N.x', change: 'create table $nsp.scratch (x int)' },
  { name: 'CREATE VIEW pg_temp.x', change: 'create view pg_temp.scratch as select 1 as x' },
  { name: 'CREATE MATERIALIZED VIEW pg_temp.x', change: 'create materialized view pg_temp.scratch as select 1 as x' },
  { name: 'CREATE SEQUENCE pg_temp.x', change: 'create sequence pg_temp.scratch' },
  { name: 'CREATE FUNCTION pg_temp.x', change: "create function pg_temp.scratch () returns int language sql as 'select 1'" },
  { name: 'CREATE TYPE pg_temp.x', change: 'create type pg_temp.scratch as (x int)' },
  { name: 'CREATE DOMAIN pg_temp.x', change: 'create domain pg_temp.scratch as int' },
  { name: 'CREATE TEMP VIEW', change: 'create temp view scratch as select 1 as x' },
  { name: 'CREATE OR REPLACE TEMPORARY RECURSIVE VIEW', change: 'create or replace temporary recursive view scratch (n) as select 1' },
  { name: 'CREATE TEMPORARY SEQUENCE', change: 'create temporary sequence scratch' },
  { name: 'CREATE TEMP TABLE AS', change: 'create temp table scratch as select 1 as x' },
  { name: 'CREATE GLOBAL TEMPORARY TABLE', change: 'create global temporary table scratch (x int)' },
  { name: 'CREATE TEMP TABLE IF NOT EXISTS', change: 'create temp table if not exists scratch (x int)' },
  { name: 'a comment between the keywords', change: 'create temp /* why */ table scratch (x int)' },
  { name: 'a line comment between the keywords', change: 'create temp -- why\n table scratch (x int)' },
  { name: 'upper case and newlines', change: 'CREATE\n\tTEMPORARY\n\tTABLE scratch (x int)' },
  { name: 'the second statement of a string', change: 'select 1; create table pg_temp.scratch (x int)' },
  { name: 'after string literals and a nested comment', change: "select E'it\\'s', 'it''s', $q$;$q$ /* a /* b */ c */; create temp table scratch (x int)" },
  { name: 'DO with EXECUTE', change: "do $$ begin execute 'create table pg_temp.scratch (x int)'; end $$" },
  {
    name: 'a temporary accounts shadowing public.accounts',
    change: "select 'intruder' as name into temp accounts",
    probe: 'select name as v from accounts',
    clean: 'public'
  },
  {
    name: 'UPDATE pg_settings (the same as SET)',
    change: "update only pg_catalog.pg_settings set setting = '1234ms' where name = 'statement_timeout'",
    probe: "select current_setting('statement_timeout') as v",
    clean: '0'
  },
  {
    name: 'DECLARE ... WITH HOLD',
    change: 'declare kept cursor with hold for select 1',
    probe: 'select count(*)::int as v from pg_cursors',
    clean: 0
  },
  {
    name: 'DO with set_config',
    change: "do $$ begin perform set_config('app.tenant_id', '42', false); end $$",
    probe: "select coalesce(current_setting('app.tenant_id', true), '') as v",
    clean: ''
  }
]

for (const c of cases) {
  t.test(`${c.name}: the next request on the same backend sees a clean session`, async (t) => {
    const app = await buildApp(t, db, { max: 1 })
    app.get('/seed', async (req) => {
      await req.db.query('create temp table seed (x int)') // gives this backend its pg_temp_N
      return 'ok'
    })
    app.get('/change', async (req) => {
      const { rows: [{ pid, nsp }] } = await req.db.query('select pg_backend_pid() as pid, pg_my_temp_schema()::regnamespace::text as nsp')
      await req.db.query(c.change.replace('$nsp', nsp))
      const { rows: [{ v }] } = await req.db.query(c.probe ?? TEMP_OBJECTS)
      return { pid, v }
    })
    app.get('/probe', async (req) => {
      const { rows: [{ pid }] } = await req.db.query('select pg_backend_pid() as pid')
      return { pid, v: (await req.db.query(c.probe ?? TEMP_OBJECTS)).rows[0].v }
    })
    if (c.change.includes('$nsp')) await app.inject('/seed')
    const changed = (await app.inject('/change')).json()
    t.not(changed.v, c.clean ?? 0, 'the statement did change the session')
    await assertReturned(t, app, db)
    const probed = (await app.inject('/probe')).json()
    t.equal(probed.pid, changed.pid, 'the same backend')
    t.same(probed.v, c.clean ?? 0)
  })
}

// Statements that leave nothing on the session: a server-side prepared statement made before
// them survives, so no DISCARD ALL ran.
const ordinary = [
  'select temp from temperature',
  'select t.temp, t.temporary from temperature t where temp > 20 order by temp offset 0',
  "insert into settings (key, value) values ('theme', 'dark') on conflict (key) do update set value = excluded.value",
  'update x set a = 1',
  'with s as (select 1) update x set a = 1',
  "delete from settings where value = 'set role tenant_reader'",
  'insert into temp (v) values (1)',
  "merge into settings s using (select 'a' as key) v on s.key = v.key when not matched then insert values (v.key, 'x')",
  'select temp into temperature_backup from temperature',
  'select * into temporary from settings', // a table named temporary
  'do $$ begin perform 1; end $$',
  "select 'a; set role tenant_reader' as v",
  "select 'create temp table y (z int)' as v",
  'select $$ listen x; set search_path = elsewhere $$ as v',
  'select 1 as v -- ; set role tenant_reader\n',
  'select 1 /* create temp table y */ as v',
  'select 1 /* a /* nested */ ; set role tenant_reader */ as v',
  "select E'\\'; set role tenant_reader' as v",
  'select 1 as "set"; select "temp" from temperature as "pg_temp"',
  'select 6 / 2 - 1 as "a""b", temp from temperature',
  "select to_regclass('pg_temp.y') as v",
  'select pg_advisory_xact_lock(1)',
  "select set_config('app.tenant_id', concat('4', '2'), true)",
  "begin; set local statement_timeout = '5s'; set local role tenant_reader; set transaction read only; select 1; commit",
  'begin; declare c cursor for select 1; fetch c; commit',
  "select set_config('app.tenant_id', '42', false" // refused by the server: nothing ran
]

for (const statement of ordinary) {
  t.test(`costs no reset: ${statement.trim()}`, async (t) => {
    const app = await buildApp(t, db, { max: 1 })
    app.get('/', async (req) => {
      await req.db.query({ name: 'kept', text: 'select 1' })
      return await req.db.query(statement).then(() => 'ok', (e: { code: string }) => e.code)
    })
    app.get('/check', async (req) => (await req.db.query("select count(*)::int as n, current_user::text as role from pg_prepared_statements where name = 'kept'")).rows[0])
    t.equal((await app.inject('/')).body, statement.endsWith('false') ? '42601' : 'ok')
    await assertReturned(t, app, db)
    t.same((await app.inject('/check')).json(), { n: 1, role: 'postgres' }, 'the prepared statement survived: no DISCARD ALL ran')
  })
}

t.test('behind PgBouncer: the same forms are refused outside a transaction, and run inside one', async (t) => {
  const app = await buildApp(t, db, { pgbouncer: true, max: 1 })
  const code = async (sql: string, values?: unknown[]): Promise<string> => await app.pg.query(sql, values).then(() => 'ok', (e: { code: string }) => e.code)
  for (const sql of ['select 1 as x into temp scratch', 'create table pg_temp.scratch (x int)', "update pg_settings set setting = '1s' where name = 'lock_timeout'"]) {
    t.equal(await code(sql), 'FST_PG_SESSION_STATE', sql)
  }
  for (const sql of ["select set_config('app.tenant_id', '42', true)", "select 'set role tenant_reader' as v", 'select temp from temperature']) {
    t.equal(await code(sql), 'ok', sql)
  }
  t.equal(await code("select set_config('app.tenant_id', $1, true)", ['42']), 'ok', 'the tenant as a parameter')
  t.equal(await code("select set_config('app.tenant_id', $1, $2)", ['42', true]), 'FST_PG_SESSION_STATE', 'is_local as a parameter: unknown, refused')
  app.get('/', async (req) => await req.db.transaction(async (tx) => {
    await tx.query('create temp table in_tx (x int) on commit drop')
    return (await tx.query('select count(*)::int as n from in_tx')).rows[0]
  }))
  t.same((await app.inject('/')).json(), { n: 0 })
  await assertReturned(t, app, db)
})
