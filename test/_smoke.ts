import Fastify from 'fastify'
import pgPool from '../src/index.js'
import { setupDatabase } from './helpers/postgres.js'
import { tenants } from './helpers/tenants.js'
import Cursor from 'pg-cursor'
const teardowns: Array<() => unknown> = []
const db = await setupDatabase({ teardown: (f: () => unknown) => teardowns.push(f) })
const tn = await tenants(db)
const app = Fastify()
await app.register(pgPool, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
app.get('/notes', async (req) => (await req.db.query('select current_user u, tenant_id, body from notes order by id')).rows)
app.get('/param', async (req) => (await req.db.query('select current_user u, count(*) from notes where id > $1', [0])).rows)
app.get('/tx', { config: { pgPool: { transaction: true } } }, async (req) => [(await req.db.query('select current_user u, count(*) from notes')).rows, (await req.db.query('select count(*) from notes where id > $1', [0])).rows])
app.get('/cursor', async (req) => { const c = await req.db.connection(); const cur = c.query(new Cursor('select body from notes')); return await cur.read(10) })
app.get('/cursortx', async (req) => req.db.transaction(async (db) => { const c = await db.connection(); const cur = c.query(new Cursor('select current_user u, body from notes')); const r = await cur.read(10); await cur.close(); return r }))
app.get('/multi', async (req) => (await req.db.query('select 1; select 2')))
app.get('/vacuum', async (req) => (await req.db.query('vacuum notes')))
app.get('/client', async (req) => { const c = await req.db.connection(); return [(await c.query('select current_user u, count(*) from notes')).rows, (await c.query('select count(*) from notes where id > $1', [0])).rows] })
app.get('/after', async () => (await app.pg.query("select current_user u, current_setting('app.tenant_id', true) s, (select count(*) from notes) n")).rows)
for (const [url, h] of [['/notes', '2'], ['/notes', undefined], ['/param', '3'], ['/tx', '1'], ['/cursor', '1'], ['/cursortx', '4'], ['/multi', '1'], ['/vacuum', '1'], ['/client', '5'], ['/after', undefined]] as const) {
  const r = await app.inject({ url, headers: h === undefined ? {} : { 'x-tenant': h } })
  console.log(url, h, r.statusCode, r.body.slice(0, 300))
}
await app.close()
for (const f of teardowns.reverse()) await f()
