/**
 * Adversarial: a connection lost inside a transaction that the code caught. PostgreSQL rolled the
 * transaction back (the backend is gone): nothing committed. README: a lost connection is
 * FST_PG_CONNECTION_LOST; FST_PG_TRANSACTION_ENDED_EARLY means "what ran before may be committed"
 * (a COMMIT in a multi-statement string).
 */
import t from 'tap'
import { assertReturned, buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { until } from '../helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table ledger (note text primary key)')
t.beforeEach(async () => { await db.admin('truncate ledger') })
const notes = async (): Promise<string[]> => (await db.admin('select note from ledger order by note')).rows.map((r) => r.note)
const insert = (note: string): string => `insert into ledger values ('${note}')`

async function killBackend (pid: number): Promise<void> {
  await db.admin('select pg_terminate_backend($1)', [pid])
  await until(async () => (await db.admin('select 1 from pg_stat_activity where pid = $1', [pid])).rowCount === 0, 'the backend is gone')
}

t.test('regression, was: wrong code: transaction(fn) whose fn caught a lost connection rejects FST_PG_TRANSACTION_ENDED_EARLY ("may be committed") though nothing can have committed', async (t) => {
  const app = await buildApp(t, db)
  let result: unknown
  app.post('/', async (req) => {
    result = await req.db.transaction(async (tx) => {
      await tx.query(insert('a'))
      await killBackend((await tx.query('select pg_backend_pid() as pid')).rows[0].pid)
      await tx.query(insert('b')).catch(() => 'best effort')
      return 'done'
    }).then(() => 'resolved', (e: { code?: string }) => e.code)
    return { result }
  })
  await app.inject({ method: 'POST', url: '/' })
  t.same(await notes(), [], 'nothing committed')
  t.not(result, 'resolved', 'never a success')
  t.equal(result, 'FST_PG_CONNECTION_LOST', 'the caller learns the connection was lost (nothing committed), not that it may be committed')
  await assertReturned(t, app, db)
})

t.test('regression, was: wrong code: a route transaction whose handler caught a lost connection answers FST_PG_TRANSACTION_ENDED_EARLY ("may be committed") though nothing can have committed', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', { config: { pgPool: { transaction: true } } }, async (req) => {
    await req.db.query(insert('a'))
    await killBackend((await req.db.query('select pg_backend_pid() as pid')).rows[0].pid)
    await req.db.query(insert('b')).catch(() => 'best effort')
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(await notes(), [], 'nothing committed')
  t.equal(res.statusCode >= 500, true, 'never a success')
  t.equal(res.json().code, 'FST_PG_CONNECTION_LOST', 'the reply says the connection was lost, not that the transaction may be committed')
  await assertReturned(t, app, db)
})
