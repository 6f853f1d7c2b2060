/**
 * A route transaction's BEGIN rides with the request's first statement: one round trip for both
 * (counted from pg's ReadyForQuery messages), with the outcomes sending them one after the other
 * gives: a failing first statement fails inside the transaction, a failing BEGIN fails everything
 * queued, a statement timeout is set inside the transaction, the user's own transaction control
 * is not bundled (it becomes a savepoint), and PgBouncer's session-state check sees the
 * transaction.
 */
import t from 'tap'
import type { ClientBase } from 'pg'
import { assertReturned, buildApp } from './helpers/app.js'
import { code, ledger, tx } from './helpers/ledger.js'
import { setupDatabase } from './helpers/postgres.js'

const db = await setupDatabase(t)
const { notes, insert } = await ledger(t, db)

/** Counts the round trips of every connection (a ReadyForQuery ends each). */
function roundTrips (): { onConnect: (client: ClientBase) => void, count: () => number, reset: () => void } {
  let n = 0
  return {
    onConnect: (client) => {
      (client as unknown as { connection: { on (event: string, fn: () => void): void } }).connection.on('readyForQuery', () => { n++ })
    },
    count: () => n,
    reset: () => { n = 0 }
  }
}

t.test('BEGIN and the first statement in one round trip; the rest as before', async (t) => {
  const trips = roundTrips()
  const app = await buildApp(t, db, { max: 1, onConnect: trips.onConnect })
  app.post('/two', tx, async (req) => {
    await req.db.query(insert('a'))
    await req.db.query('insert into ledger values ($1)', ['b'])
    return 'ok'
  })
  app.post('/one', tx, async (req) => (await req.db.query('select $1::int as n', [1])).rows[0])
  await app.inject({ method: 'POST', url: '/one' }) // connects (onConnect's own round trips)
  trips.reset()
  t.equal((await app.inject({ method: 'POST', url: '/two' })).statusCode, 200)
  t.equal(trips.count(), 3, 'BEGIN + insert, insert, COMMIT')
  t.same(await notes(), ['a', 'b'])
  trips.reset()
  t.same((await app.inject({ method: 'POST', url: '/one' })).json(), { n: 1 })
  t.equal(trips.count(), 2, 'BEGIN + select (prepared), COMMIT')
  await assertReturned(t, app, db)
})

t.test('the first statement fails: inside the transaction, which rolls back; what follows is refused by the server', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.post('/', tx, async (req) => {
    const first = await req.db.query('insert into ledger values ($1::int / 0)', [1]).catch(code)
    const second = await req.db.query(insert('after')).catch(code)
    return { first, second }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(res.json(), { code: 'FST_PG_TRANSACTION_ABORTED', statusCode: 500, error: 'Internal Server Error', message: res.json().message }, 'the reply does not claim a commit')
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('a handler that catches the failure of its first statement: the second meets the aborted transaction (25P02)', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const seen: unknown[] = []
  app.post('/', tx, async (req, reply) => {
    seen.push(await req.db.query('select 1 / $1::int', [0]).catch(code))
    seen.push(await req.db.query(insert('after')).catch(code))
    return reply.code(409).send('conflict')
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 409)
  t.same(seen, ['22012', '25P02'])
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('a route statement timeout travels after the BEGIN: local to the transaction', async (t) => {
  const trips = roundTrips()
  const app = await buildApp(t, db, { max: 1, onConnect: trips.onConnect })
  app.post('/', { config: { pgPool: { transaction: true, statementTimeoutMs: 100 } } }, async (req, reply) => {
    const setting = (await req.db.query("select current_setting('statement_timeout') as s")).rows[0].s
    const slow = await req.db.query('select pg_sleep(1)').catch(code)
    return reply.code(504).send({ setting, slow })
  })
  app.get('/after', async (req) => (await req.db.query("select current_setting('statement_timeout') as s")).rows[0])
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { setting: '100ms', slow: '57014' })
  t.same((await app.inject('/after')).json(), { s: '0' }, 'nothing left on the session')
  trips.reset()
  await app.inject({ method: 'POST', url: '/' })
  t.equal(trips.count(), 3, 'BEGIN + timeout + select, the slow one, ROLLBACK')
  await assertReturned(t, app, db)
})

t.test("the user's own BEGIN as the first statement is not bundled: it becomes a savepoint", async (t) => {
  const trips = roundTrips()
  const app = await buildApp(t, db, { max: 1, onConnect: trips.onConnect })
  app.post('/', tx, async (req) => {
    const begin = (await req.db.query('begin')).command
    await req.db.query(insert('inner'))
    const commit = (await req.db.query('commit')).command
    return { begin, commit }
  })
  await app.inject({ method: 'POST', url: '/' })
  trips.reset()
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { begin: 'SAVEPOINT', commit: 'RELEASE' })
  t.equal(trips.count(), 5, 'BEGIN, SAVEPOINT, insert, RELEASE, COMMIT')
  t.same(await notes(), ['inner', 'inner'])
  await assertReturned(t, app, db)
})

t.test('statements queued together: the first rides with BEGIN, the others follow in order', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.post('/', tx, async (req) => {
    const results = await Promise.all([1, 2, 3].map((i) => req.db.query('insert into ledger values ($1) returning note', [`n${i}`])))
    return results.map((r) => r.rows[0].note)
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), ['n1', 'n2', 'n3'])
  t.same(await notes(), ['n1', 'n2', 'n3'])
})

t.test('behind PgBouncer (pgbouncer: true), session state as the first statement of a route transaction is allowed: it is inside it', async (t) => {
  const app = await buildApp(t, db, { max: 1, pgbouncer: true })
  app.post('/', tx, async (req) => {
    await req.db.query("set local application_name = 'in-tx'")
    return (await req.db.query("select current_setting('application_name') as name")).rows[0]
  })
  app.post('/outside', async (req) => await req.db.query("set application_name = 'leak'").catch(code))
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { name: 'in-tx' })
  t.equal((await app.inject({ method: 'POST', url: '/outside' })).body, 'FST_PG_SESSION_STATE', 'outside a transaction: still refused')
})

t.test('a prepared statement the server dropped, riding with BEGIN: not sent again (the transaction is aborted); the next request prepares it again', async (t) => {
  const app = await buildApp(t, db, { max: 1, sessionReset: false })
  app.post('/', tx, async (req) => (await req.db.query('select $1::int as n', [1])).rows[0])
  // (Behind another statement in the same string: a DEALLOCATE the plugin cannot see.)
  app.post('/drop', async (req) => { await req.db.query('select 1; deallocate all'); return 'ok' })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { n: 1 })
  await app.inject({ method: 'POST', url: '/drop' })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, '26000')
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { n: 1 })
  await assertReturned(t, app, db)
})
