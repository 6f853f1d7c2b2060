/**
 * Connections that die: a backend terminated while checked out or while idle never crashes
 * the process and is never handed out again; transactions left open are rolled back on return.
 */
import t from 'tap'
import { isConnectionError } from '../src/index.js'
import { assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { proxied } from './helpers/net.js'
import { deferred, until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table items (note text not null)')
t.beforeEach(async () => { await db.admin('truncate items') })

const terminate = (pid: number): Promise<unknown> => db.admin('select pg_terminate_backend($1)', [pid])

t.test('a backend terminated while checked out: that request fails cleanly, the next succeeds', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const pidSeen = deferred<number>()
  const proceed = deferred()
  app.get('/victim', async (req) => {
    const { rows } = await req.db.query('select pg_backend_pid() as pid')
    const client = await req.db.connection()
    const heard = new Promise((resolve) => client.once('end', resolve))
    pidSeen.resolve(rows[0].pid)
    await proceed.promise
    await heard // pg has read the termination (else the statement could still be written: a 500)
    await req.db.query('select 1')
    return 'unreachable'
  })
  app.get('/pid', async (req) => (await req.db.query('select pg_backend_pid() as pid')).rows[0])

  const victim = app.inject('/victim')
  const pid = await pidSeen.promise
  await terminate(pid)
  // pg reports the termination on the socket; without a listener this would crash the process.
  await until(async () => (await db.admin('select 1 from pg_stat_activity where pid = $1', [pid])).rowCount === 0, 'the backend is gone')
  proceed.resolve()
  const res = await victim
  t.equal(res.statusCode, 503, 'the request whose connection died gets a 503: its statement was never sent')
  t.equal(res.json().code, 'FST_PG_CONNECTION_LOST')
  await assertReturned(t, app, db)
  const next = await app.inject('/pid')
  t.equal(next.statusCode, 200)
  t.not(next.json<{ pid: number }>().pid, pid, 'the dead connection was destroyed, not pooled')
})

t.test('idle backends terminated: removed from the pool, requests keep succeeding', async (t) => {
  const app = await buildApp(t, db, { max: 3, pingIdleMs: false })
  app.get('/pid', async (req) => (await req.db.query('select pg_backend_pid() as pid')).rows[0])
  const first = await Promise.all([app.inject('/pid'), app.inject('/pid'), app.inject('/pid')])
  const pids = first.map((r) => r.json<{ pid: number }>().pid)
  t.equal(app.pg.stats().idle, app.pg.stats().total)
  await db.admin("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'fpp-app'")
  // The server's notice reaches each idle client as an 'error' and 'end': the pool drops them.
  await until(() => app.pg.stats().total === 0, 'the terminated idle connections left the pool')
  for (let i = 0; i < 5; i++) {
    const res = await app.inject('/pid')
    t.equal(res.statusCode, 200)
    t.notOk(pids.includes(res.json<{ pid: number }>().pid))
  }
})

t.test('returned inside an open transaction: rolled back, then pooled', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.post('/', async (req) => {
    await req.db.query('begin')
    await req.db.query("insert into items values ('uncommitted')")
    return (await req.db.query('select pg_backend_pid() as pid')).rows[0]
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 200)
  await assertReturned(t, app, db)
  t.same((await db.admin('select * from items')).rows, [])
  const { rows } = await db.admin('select state from pg_stat_activity where pid = $1', [res.json<{ pid: number }>().pid])
  t.same(rows, [{ state: 'idle' }], 'the same backend is idle, back in the pool')
})

t.test('returned inside a failed transaction: rolled back, then pooled', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.post('/', async (req) => {
    await req.db.query('begin')
    await req.db.query("insert into items values ('doomed')")
    await t.rejects(req.db.query('select * from no_such_table'), { code: '42P01' })
    return 'handled'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  await assertReturned(t, app, db)
  t.equal(app.pg.stats().total, 1, 'the connection was kept')
  t.same((await db.admin('select * from items')).rows, [])
})

t.test('a rollback that cannot complete destroys the connection', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { max: 1, connectionString: url, pingTimeoutMs: 200 })
  app.post('/', async (req) => {
    await req.db.query('begin')
    await req.db.query("insert into items values ('stranded')")
    proxy.blackhole()
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  await until(() => app.pg.stats().total === 0, 'the connection whose rollback timed out is destroyed')
  // The server keeps the stranded session (the blackhole holds its socket open) until its own
  // timeouts act; what matters is that the app never reuses it.
  const { rows } = await app.pg.query('select count(*)::int as n from items')
  t.same(rows, [{ n: 0 }], 'a new connection serves, and never saw the stranded insert')
  // Its lock would hold up the next test's TRUNCATE until the server's own timeouts act.
  await db.admin("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'fpp-app' and state like 'idle in transaction%'")
})

t.test('an ERROR of class 08 (a wrong parameter count, 08P01) keeps the connection: the severity decides', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req) => await req.db.query('select $1::int + $2::int as n', [1]))
  for (let i = 0; i < 21; i++) {
    const res = await app.inject('/')
    t.equal(res.json().code, '08P01', `request ${i + 1}: the server's own error`)
  }
  t.equal(app.pg.stats().created, 1, '21 requests, one connection')
  t.equal(app.pg.stats().destroyed.error, 0)
  t.notOk(isConnectionError({ code: '08P01', severity: 'ERROR' }))
  t.ok(isConnectionError({ code: '57P01', severity: 'FATAL' }))
  t.ok(isConnectionError({ code: '08006', severity: 'FATAL' }))
  t.ok(isConnectionError({ code: 'XX000', severity: 'PANIC' }))
  t.ok(isConnectionError({ code: '08P01', severity: 'FATAL' }))
  t.ok(isConnectionError({ code: '08P01', severity: 'FATAL_IN_ANOTHER_LANGUAGE' }), 'a localised severity falls back to the class')
  t.notOk(isConnectionError({ code: '57014', severity: 'ERROR' }), 'a cancelled statement leaves the session usable')
  await assertReturned(t, app, db)
})

t.test('a connection lost while the statement ran: FST_PG_CONNECTION_LOST, 500 (it may have run)', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    const { rows: [{ pid }] } = await req.db.query('select pg_backend_pid() as pid')
    const running = req.db.query('select pg_sleep(5)').then(() => new Error('not terminated'), (error: Error) => error)
    await until(async () => (await db.admin("select 1 from pg_stat_activity where pid = $1 and state = 'active'", [pid])).rowCount === 1, 'the statement runs')
    await terminate(pid)
    throw await running
  })
  const res = await app.inject('/')
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_PG_CONNECTION_LOST')
  t.match(res.json().message, /may or may not have taken effect/)
  await assertReturned(t, app, db)
})

t.test('a connection() client whose backend is gone: its statement is refused by pg, unsent: 503 FST_PG_CONNECTION_LOST', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    const client = await req.db.connection()
    const { rows: [{ pid }] } = await client.query('select pg_backend_pid() as pid')
    const heard = new Promise((resolve) => client.once('end', resolve))
    await terminate(pid)
    await heard
    const error = await client.query('select 1').then(() => ({ code: 'sent', statusCode: 0 }), (e: { code?: string, statusCode?: number }) => e)
    return { code: error.code, statusCode: error.statusCode }
  })
  t.same((await app.inject('/')).json(), { code: 'FST_PG_CONNECTION_LOST', statusCode: 503 })
  await assertReturned(t, app, db)
})
