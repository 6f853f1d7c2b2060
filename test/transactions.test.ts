/** request.db.transaction(): commit, rollback on throw, savepoints when nested, begin options. */
import Fastify from 'fastify'
import t from 'tap'
import pgPool, { isConnectionError } from '../src/index.js'
import { assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'

const db = await setupDatabase(t)
await db.admin('create table ledger (note text not null)')
t.beforeEach(async () => { await db.admin('truncate ledger') })

const notes = async (): Promise<string[]> => (await db.admin('select note from ledger order by note')).rows.map((r) => r.note)

t.test('commits and returns the callback\'s value', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => await req.db.transaction(async (tx) => {
    await tx.query("insert into ledger values ('a')")
    await tx.query("insert into ledger values ('b')")
    return { done: true }
  }))
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { done: true })
  t.same(await notes(), ['a', 'b'])
  await assertReturned(t, app, db)
})

t.test('rolls back when the callback throws, and rethrows', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => {
    await t.rejects(req.db.transaction(async (tx) => {
      await tx.query("insert into ledger values ('lost')")
      throw new Error('changed my mind')
    }), { message: 'changed my mind' })
    return (await req.db.query('select count(*)::int as n from ledger')).rows[0]
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { n: 0 })
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('nested: an inner failure rolls back to its savepoint; the outer commits', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => await req.db.transaction(async (tx) => {
    await tx.query("insert into ledger values ('outer')")
    await tx.transaction(async (inner) => {
      await inner.query("insert into ledger values ('inner kept')")
    })
    await tx.transaction(async (inner) => {
      await inner.query("insert into ledger values ('inner lost')")
      await inner.query('select 1 / 0')
    }).catch(() => 'recovered')
    return 'ok'
  }))
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  t.same(await notes(), ['inner kept', 'outer'])
})

t.test('isolation level, read only, deferrable', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => await req.db.transaction(async (tx) => (await tx.query(
    "select current_setting('transaction_isolation') as isolation, current_setting('transaction_read_only') as ro, current_setting('transaction_deferrable') as deferrable"
  )).rows[0], { isolationLevel: 'serializable', readOnly: true, deferrable: true }))
  app.get('/rw', async (req) => await req.db.transaction(async (tx) => (await tx.query(
    "select current_setting('transaction_read_only') as ro, current_setting('transaction_deferrable') as deferrable")).rows[0],
  { isolationLevel: 'read committed', readOnly: false, deferrable: false }))
  t.same((await app.inject('/')).json(), { isolation: 'serializable', ro: 'on', deferrable: 'on' })
  t.same((await app.inject('/rw')).json(), { ro: 'off', deferrable: 'off' })
})

t.test('bad options: coded errors, nothing begun', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    await t.rejects(req.db.transaction(async () => 1, { isolationLevel: 'chaos' as never }), { code: 'FST_PG_INVALID_OPTION', message: /isolationLevel/ })
    await req.db.transaction(async (tx) => {
      await t.rejects(tx.transaction(async () => 1, { readOnly: true }), { code: 'FST_PG_INVALID_OPTION', message: /savepoint/ })
    })
    return (await req.db.query('select 1 as n')).rows[0]
  })
  t.same((await app.inject('/')).json(), { n: 1 })
  await assertReturned(t, app, db)
})

t.test('application_name defaults to the package name; an explicit one wins', async (t) => {
  const app = Fastify()
  await app.register(pgPool, { connectionString: db.url })
  t.teardown(() => app.close())
  t.same((await app.pg.query("select current_setting('application_name') as name")).rows, [{ name: 'fastify-pg-pool' }])
  const named = await buildApp(t, db, { application_name: 'orders-api' })
  t.same((await named.pg.query("select current_setting('application_name') as name")).rows, [{ name: 'orders-api' }])
})

t.test('the connection dies inside the transaction: the callback\'s error surfaces, nothing is committed', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => {
    const error = await req.db.transaction(async (tx) => {
      await tx.query("insert into ledger values ('doomed')")
      const { rows } = await tx.query('select pg_backend_pid() as pid')
      await db.admin('select pg_terminate_backend($1)', [rows[0].pid])
      await tx.query('select 1')
    }).catch((error: unknown) => error)
    // The termination itself (57P01), or the dead client's refusal, depending on which the
    // client read first: a connection-class error either way, and not the failed rollback's.
    t.ok(isConnectionError(error), String(error))
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})
