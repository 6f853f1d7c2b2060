/**
 * Adversarial: the connection() client (pg's client behind a proxy) used around and alongside
 * request.db's transactions, and Submittables on it.
 */
import QueryStream from 'pg-query-stream'
import t from 'tap'
import { assertReturned, buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)
await db.admin('create table ledger (note text primary key)')
await db.admin('create role tenant_reader nologin; grant tenant_reader to postgres')
t.beforeEach(async () => { await db.admin('truncate ledger') })

const notes = async (): Promise<string[]> => (await db.admin('select note from ledger order by note')).rows.map((r) => r.note)
const insert = (note: string): string => `insert into ledger values ('${note}')`
const code = (error: unknown): unknown => (error as { code?: unknown }).code

t.test('regression, was: "while transaction(fn) runs, only the db passed to fn sends statements" broken: a connection() client taken before sends into the transaction, and its acknowledged insert is rolled back with it', async (t) => {
  const app = await buildApp(t, db)
  let outcome: unknown
  app.post('/', async (req) => {
    const client = await req.db.connection()
    await req.db.transaction(async (tx) => {
      await tx.query(insert('tx'))
      // an audit write meant to outlive the transaction, through the outer db's client
      outcome = await client.query(insert('audit')).then((r) => `INSERT ${r.rowCount}`, code)
      throw new Error('fn fails')
    }).catch(() => {})
    return { outcome }
  })
  await app.inject({ method: 'POST', url: '/' })
  // Either refused like request.db (FST_PG_TRANSACTION_SCOPE), or acknowledged and kept: never both
  // acknowledged and silently rolled back.
  const kept = await notes()
  t.ok(outcome === 'FST_PG_TRANSACTION_SCOPE' || kept.includes('audit'), `outcome ${String(outcome)}, committed ${JSON.stringify(kept)}`)
  t.equal(outcome, 'FST_PG_TRANSACTION_SCOPE', 'the outer client is refused while fn runs')
  await assertReturned(t, app, db)
})

t.test('regression, was: "a transaction() opened inside [the user\'s BEGIN] becomes a savepoint of it" when the BEGIN went through connection() and was not awaited yet broken: the user\'s ROLLBACK undoes nothing', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => {
    const client = await req.db.connection()
    const began = client.query('begin')
    await req.db.transaction(async (tx) => { await tx.query(insert('inner')) })
    await began
    const { command } = await client.query('rollback')
    return { command }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(res.json(), { command: 'ROLLBACK' })
  t.same(await notes(), [], 'the user\'s rollback undid the inner transaction too (calls in order: begin, transaction(), rollback)')
  await assertReturned(t, app, db)
})

t.test("regression, was: sessionReset 'auto' through connection() broken: a pg-query-stream (no .text of its own) that calls set_config(..., false) leaves its setting to the next request", async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/change', async (req) => {
    const client = await req.db.connection()
    const stream = client.query(new QueryStream("select set_config('app.tenant_id', '42', false) as v"))
    const rows: unknown[] = []
    for await (const row of stream) rows.push(row)
    return rows
  })
  app.get('/probe', async (req) => (await req.db.query("select coalesce(current_setting('app.tenant_id', true), '') as v")).rows[0])
  t.same((await app.inject('/change')).json(), [{ v: '42' }])
  await assertReturned(t, app, db)
  t.same((await app.inject('/probe')).json(), { v: '' }, 'the next request sees no tenant')
})

t.test("regression, was: sessionReset 'auto' through connection() broken: SET ROLE in a pg-query-stream reaches the next request", async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/change', async (req) => {
    const client = await req.db.connection()
    const stream = client.query(new QueryStream("select set_config('role', 'tenant_reader', false) as v"))
    await stream.toArray()
    return 'ok'
  })
  app.get('/probe', async (req) => (await req.db.query('select current_user::text as v')).rows[0])
  await app.inject('/change')
  await assertReturned(t, app, db)
  t.same((await app.inject('/probe')).json(), { v: 'postgres' }, 'the next request runs as the pool\'s own role')
})
