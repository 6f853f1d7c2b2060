/**
 * An identity function that looks the tenant up through the request's own `request.db` (a
 * sessions table). Its statement re-entered the request's first checkout: the handler's
 * statement went out on the lookup's connection without the identity (as the login role), and
 * connections were never returned (the pool ran dry, app.close() hung). Now `request.db` and
 * `request.dbs` refuse inside the identity function with FST_PG_IDENTITY, before anything is
 * checked out; the lookup belongs on `fastify.pg.query()`. A handle reached another way is refused
 * while the function runs; after an await inside it, its statement waits for the identity, and
 * the function is bounded by acquireTimeoutMs (it hung before).
 */
import t from 'tap'
import type { FastifyRequest } from 'fastify'
import type { RequestDb } from '../../src/index.js'
import { assertReturned, buildApp } from '../helpers/app.js'
import { code } from '../helpers/ledger.js'
import { setupDatabase } from '../helpers/postgres.js'
import { tenants } from '../helpers/tenants.js'

const db = await setupDatabase(t)
const tn = await tenants(db)
await db.admin(`create table sessions (token text primary key, tenant int); insert into sessions values ('a', 2), ('b', 3);
  grant select on sessions to ${tn.login}; create table seen (who text, tenant text); grant insert on seen to ${tn.login}, ${tn.role}`)
type Kept = FastifyRequest & { kept?: RequestDb | null }
const AUDIT = "insert into seen values (current_user, current_setting('app.tenant_id', true))"
const WHO = "select current_user as user, coalesce(array_agg(distinct tenant_id), '{}') as tenants from notes"

t.test('request.db inside the identity function: refused, nothing checked out, nothing leaked', async (t) => {
  const app = await buildApp(t, db, {
    connectionString: tn.url,
    max: 2,
    identity: async (req) => {
      const { rows } = await req.db.query('select tenant from sessions where token = $1', [req.headers['x-token']])
      return { role: tn.role, settings: { 'app.tenant_id': rows[0].tenant } }
    }
  })
  app.get('/', async (req) => (await req.db.query(WHO)).rows[0])
  app.get('/dbs', { config: { pgPool: { identity: (req) => req.dbs.default === undefined ? undefined : undefined } } }, async (req) => (await req.db.query(WHO)).rows[0])
  for (const path of ['/', '/', '/', '/dbs']) {
    const res = await app.inject({ url: path, headers: { 'x-token': 'a' } })
    t.equal(res.statusCode, 500)
    t.equal(res.json().code, 'FST_PG_IDENTITY')
    t.match(res.json().message, /fastify\.pg\.query/)
  }
  t.equal(app.pg.stats().total, 0, 'no connection was opened')
  await assertReturned(t, app, db)
})

t.test('the lookup on fastify.pg.query(): the handler runs with the identity it found', async (t) => {
  const app = await buildApp(t, db, {
    connectionString: tn.url,
    max: 1,
    identity: async (req) => {
      const { rows } = await req.server.pg.query('select tenant from sessions where token = $1', [req.headers['x-token']])
      return rows.length === 0 ? undefined : { role: tn.role, settings: { 'app.tenant_id': rows[0].tenant } }
    }
  })
  app.get('/', async (req) => (await req.db.query(WHO)).rows[0])
  for (const [token, tenant] of [['a', 2], ['b', 3], ['a', 2]] as const) {
    t.same((await app.inject({ url: '/', headers: { 'x-token': token } })).json(), { user: tn.role, tenants: [tenant] })
  }
  t.same((await app.inject({ url: '/', headers: { 'x-token': 'none' } })).json(), { user: tn.login, tenants: [] })
  await assertReturned(t, app, db)
})

t.test('a handle reached another way: refused while the function runs, bounded after it awaits', async (t) => {
  const app = await buildApp(t, db, {
    connectionString: tn.url,
    max: 1,
    acquireTimeoutMs: 300,
    identity: async (req) => {
      const kept = (req as Kept).kept
      if (req.headers['x-when'] === 'at-once') {
        // In the function's own turn: refused at once (it would wait for this identity).
        const [refused, client] = await Promise.all([kept?.query(AUDIT).then(() => 'sent', code), kept?.connection().then(() => 'handed', code)])
        if (refused !== 'FST_PG_IDENTITY' || client !== 'FST_PG_IDENTITY') throw new Error(`${String(refused)} ${String(client)}`)
        return tn.fromHeader(req)
      }
      // After an await it cannot be told from the handler's own statements: it waits, and the
      // function is bounded by acquireTimeoutMs.
      await new Promise((resolve) => setImmediate(resolve))
      await kept?.query(AUDIT)
      return tn.fromHeader(req)
    }
  })
  app.decorateRequest('kept', null)
  app.addHook('preHandler', async (req) => { (req as Kept).kept = req.db })
  app.get('/', async (req) => (await req.db.query(WHO)).rows[0])
  t.same((await app.inject({ url: '/', headers: { 'x-tenant': '4', 'x-when': 'at-once' } })).json(), { user: tn.role, tenants: [4] })
  const started = performance.now()
  const waited = await app.inject({ url: '/', headers: { 'x-tenant': '5', 'x-when': 'later' } })
  t.equal(waited.json().code, 'FST_PG_IDENTITY', 'failed, not hung')
  t.ok(performance.now() - started < 3000, 'within about acquireTimeoutMs')
  t.same((await db.admin('select * from seen')).rows, [], 'nothing ran without an identity')
  await assertReturned(t, app, db)
})
