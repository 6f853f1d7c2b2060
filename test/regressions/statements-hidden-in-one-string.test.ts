/**
 * Several statements hidden in one string, where a COMMIT ends a transaction early and what
 * follows runs outside it: in a COPY stream's or a pg.Query's text (checked as a cursor before as
 * several statements, the identity was sent in front of the string and the COMMIT in it ended
 * it: an insert ran as the login role), and behind a backslash in a string literal, which a
 * server with `standard_conforming_strings` off reads as an escape (the plugin's tokenizer saw one
 * statement: with an identity the statement after the COMMIT ran without it; without one a
 * session change escaped the reset, and a COMMIT the transaction check). Each is now refused
 * unsent, or seen.
 */
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import t from 'tap'
import pg from 'pg'
import { to as copyTo } from 'pg-copy-streams'
import { buildApp } from '../helpers/app.js'
import { code } from '../helpers/ledger.js'
import { setupDatabase } from '../helpers/postgres.js'
import { tenants } from '../helpers/tenants.js'

const db = await setupDatabase(t)
const tn = await tenants(db)
await db.admin(`create table audit (who text, tenant text); grant insert, select on audit to ${tn.role}, ${tn.login}`)
const AUDIT = "insert into audit values (current_user, current_setting('app.tenant_id', true))"
const sink = (): Writable => new Writable({ write (_chunk, _encoding, done) { done() } })
t.beforeEach(async () => { await db.admin('delete from audit') })

t.test('a COPY or a pg.Query whose text holds several statements: refused with an identity, unsent', async (t) => {
  const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
  app.get('/copy-in-transaction', async (req) => await req.db.transaction(async (tx) => {
    const client = await tx.connection()
    await pipeline(client.query(copyTo(`copy (select 1) to stdout; commit; ${AUDIT}`)), sink())
  }).catch(code))
  app.get('/copy-after-begin', async (req) => {
    const client = await req.db.connection()
    await client.query('begin')
    try {
      return await pipeline(client.query(copyTo(`copy (select 1) to stdout; commit; ${AUDIT}`)), sink())
    } catch (error) {
      return code(error)
    }
  })
  app.get('/query-object', async (req) => {
    await req.db.query('begin')
    return await req.db.query(new pg.Query(`select 1; commit; ${AUDIT}`) as never).catch(code)
  })
  const refused = { '/copy-in-transaction': 'FST_PG_TRANSACTION_CONTROL', '/copy-after-begin': 'FST_PG_IDENTITY_UNSUPPORTED', '/query-object': 'FST_PG_IDENTITY_UNSUPPORTED' }
  for (const [path, why] of Object.entries(refused)) {
    t.equal((await app.inject({ url: path, headers: { 'x-tenant': '2' } })).body, why, path)
  }
  t.same((await db.admin('select * from audit')).rows, [], 'nothing ran')
})

t.test('standard_conforming_strings off: a backslash cannot hide statements', async (t) => {
  const hidden = (then: string): string => `select 'x\\'' ; ${then} ; select ''`
  t.test('from the identity', async (t) => {
    const app = await buildApp(t, db, { connectionString: tn.url, max: 1, identity: tn.fromHeader })
    app.get('/', async (req) => {
      await req.db.query('begin')
      await req.db.query('set local standard_conforming_strings = off')
      return await req.db.query({ text: hidden(`commit; ${AUDIT}`), queryMode: 'simple' } as never).catch(code)
    })
    t.equal((await app.inject({ url: '/', headers: { 'x-tenant': '3' } })).body, 'FST_PG_IDENTITY_UNSUPPORTED')
    t.same((await db.admin('select * from audit')).rows, [], 'nothing ran')
  })

  t.test('from the session reset and the transaction check', async (t) => {
    const app = await buildApp(t, db, { max: 1, options: '-c standard_conforming_strings=off' })
    app.get('/set', async (req) => (await req.db.query(hidden('set search_path = pg_temp')) as unknown as unknown[]).length)
    app.get('/show', async (req) => (await req.db.query('show search_path')).rows[0].search_path)
    app.get('/commit', async (req) => await req.db.transaction(async (tx) => await tx.query(hidden(`commit; ${AUDIT}`))).catch(code))
    t.equal((await app.inject('/set')).body, '3', 'the server ran three statements')
    t.equal((await app.inject('/show')).body, '"$user", public', 'the SET did not reach the next request')
    t.equal((await app.inject('/commit')).body, 'FST_PG_TRANSACTION_CONTROL', 'the COMMIT inside is refused, unsent')
    t.same((await db.admin('select * from audit')).rows, [])
  })
})
