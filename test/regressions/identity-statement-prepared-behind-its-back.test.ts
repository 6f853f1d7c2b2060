/**
 * Two ways the statement that sets a request's identity, or the statement behind it, went wrong
 * because it is prepared:
 * - A function that deallocated everything and prepared another statement under the identity
 *   statement's name: the plugin's Bind ran that one, and every later statement on the connection
 *   (later requests too: nothing marked the session for a reset) ran as the login role. Now the
 *   identity statement's answer is checked: the statement behind it fails with FST_PG_IDENTITY
 *   (its result withheld) and the name is closed and prepared again.
 * - A statement without parameters, prepared because it carried an identity, in a route
 *   transaction after a column was added to its table: 0A000, a 500 the same app without an
 *   identity did not give. Inside a transaction such statements are no longer prepared.
 */
import t from 'tap'
import { assertReturned, buildApp } from '../helpers/app.js'
import { code, tx } from '../helpers/ledger.js'
import { setupDatabase } from '../helpers/postgres.js'
import { tenants } from '../helpers/tenants.js'

const db = await setupDatabase(t)
const tn = await tenants(db)
const WHO = "select current_user as user, coalesce(array_agg(distinct tenant_id), '{}') as tenants from notes"
const header = (tenant: number): Record<string, string> => ({ 'x-tenant': String(tenant) })

t.test('another statement prepared under the identity statement\'s name: caught, and the name prepared again', async (t) => {
  await db.admin(`create function takes_the_name() returns int language plpgsql as $f$ begin
     execute 'deallocate all';
     execute 'prepare fpp_identity_r1(text, text, text) as select $1, $2, $3';
     return 1; end $f$; grant execute on function takes_the_name() to public`)
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
  app.get('/take', async (req) => (await req.db.query('select takes_the_name()')).rows[0])
  app.get('/', async (req) => (await req.db.query(WHO)).rows[0])
  app.get('/twice', async (req) => [await req.db.query(WHO).then((r) => r.rows[0], code), (await req.db.query(WHO)).rows[0]])
  t.same((await app.inject({ url: '/', headers: header(2) })).json(), { user: tn.role, tenants: [2] })
  t.equal((await app.inject({ url: '/take', headers: header(2) })).statusCode, 200)
  t.same((await app.inject({ url: '/twice', headers: header(3) })).json(), ['FST_PG_IDENTITY', { user: tn.role, tenants: [3] }], 'the first statement after it fails, withheld; the next has its identity')
  t.same((await app.inject({ url: '/', headers: header(4) })).json(), { user: tn.role, tenants: [4] }, 'and later requests')
  await assertReturned(t, app, db)
})

t.test('settings only: the first custom setting is what is checked', async (t) => {
  await db.admin(`create or replace function takes_a_name() returns int language plpgsql as $f$ begin
     execute 'deallocate all';
     execute 'prepare fpp_identity_1(text, text) as select $1, $2';
     return 1; end $f$; grant execute on function takes_a_name() to public`)
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: (req) => ({ settings: { 'app.tenant_id': String(req.headers['x-tenant']) } }) })
  app.get('/take', async (req) => (await req.db.query('select takes_a_name()')).rows[0])
  app.get('/', async (req) => [await req.db.query("select current_setting('app.tenant_id') as t").then((r) => r.rows[0], code), (await req.db.query("select current_setting('app.tenant_id') as t")).rows[0]])
  t.same((await app.inject({ url: '/', headers: header(5) })).json(), [{ t: '5' }, { t: '5' }])
  await app.inject({ url: '/take', headers: header(5) })
  t.same((await app.inject({ url: '/', headers: header(6) })).json(), ['FST_PG_IDENTITY', { t: '6' }])
})

t.test('a column added while the app runs: a route transaction\'s parameterless select * goes on', async (t) => {
  await db.admin(`create table migrating (a int); insert into migrating values (1); grant select on migrating to ${tn.login}, ${tn.role}`)
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
  app.get('/tx', tx, async (req) => (await req.db.query('select * from migrating')).rows)
  app.get('/', async (req) => (await req.db.query('select * from migrating')).rows)
  for (const path of ['/tx', '/']) t.same((await app.inject({ url: path, headers: header(1) })).json(), [{ a: 1 }])
  await db.admin('alter table migrating add column b int default 5')
  t.same((await app.inject({ url: '/tx', headers: header(1) })).json(), [{ a: 1, b: 5 }], 'in a transaction: not prepared, so nothing stale')
  t.same((await app.inject({ url: '/', headers: header(1) })).json(), [{ a: 1, b: 5 }], 'outside one: prepared, gone stale, prepared again and sent once more')
  await assertReturned(t, app, db)
})
