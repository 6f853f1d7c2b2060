/**
 * `pooling: false` (SQLAlchemy's NullPool): each request opens its own connection on first use
 * and closes it when it ends, with every lifecycle guarantee of the pool.
 */
import t from 'tap'
import { appBackends, assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, listen, send, until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table ledger (note text not null)')

t.test('each request gets a connection of its own, closed when it ends', async (t) => {
  const app = await buildApp(t, db, { pooling: false })
  app.get('/', async (req) => (await req.db.query('select pg_backend_pid() as pid')).rows[0].pid)
  app.get('/none', async () => 'no database')
  const pids = new Set<string>()
  for (let i = 0; i < 5; i++) {
    pids.add((await app.inject('/')).body)
    await until(() => app.pg.stats().total === 0, 'the connection is closed')
  }
  t.equal(pids.size, 5, 'five requests, five backends')
  t.equal((await app.inject('/none')).body, 'no database')
  t.equal(app.pg.stats().total, 0, 'a request that never queries opens nothing')
  await until(async () => (await appBackends(db)).length === 0, 'no backend is left')
})

t.test('an aborted request mid-transaction: rolled back, and the connection closed', async (t) => {
  const app = await buildApp(t, db, { pooling: false })
  const inserted = deferred()
  app.post('/', { config: { pgPool: { transaction: true } } }, async (req) => {
    await req.db.query("insert into ledger values ('lost')")
    inserted.resolve()
    await new Promise(() => {}) // never replies
  })
  const url = await listen(app)
  const sent = send(url, { method: 'POST', body: {} })
  await inserted.promise
  sent.req.destroy()
  await sent.done
  await until(async () => (await appBackends(db)).length === 0, 'the backend is gone')
  t.same((await db.admin('select count(*)::int as n from ledger')).rows, [{ n: 0 }])
  await assertReturned(t, app, db)
})

t.test('max still bounds the connections open at once', async (t) => {
  const app = await buildApp(t, db, { pooling: false, max: 2 })
  const release = deferred()
  app.get('/', async (req) => {
    await req.db.query('select 1')
    await release.promise
    return 'ok'
  })
  const requests = Array.from({ length: 4 }, () => app.inject('/'))
  await until(() => app.pg.stats().waiting === 2, 'two wait')
  t.equal(app.pg.stats().total, 2)
  release.resolve()
  t.same((await Promise.all(requests)).map((r) => r.statusCode), [200, 200, 200, 200])
  await until(() => app.pg.stats().total === 0, 'all closed')
})

t.test('bad values: coded errors', async (t) => {
  await t.rejects(buildApp(t, db, { pooling: 'no' as never }), { code: 'FST_PG_INVALID_OPTION', message: /pooling/ })
  await t.rejects(buildApp(t, db, { pooling: false, min: 1 }), { code: 'FST_PG_INVALID_OPTION', message: /min/ })
})

t.test('a request that leaves while its connection is being opened: that connection is closed, not kept', async (t) => {
  const gate = deferred()
  const app = await buildApp(t, db, { pooling: false, onConnect: async () => { await gate.promise } })
  app.get('/', async (req) => (await req.db.query('select 1')).rowCount)
  const sent = send(await listen(app))
  await until(() => app.pg.stats().total === 1, 'the connection is being opened')
  sent.req.destroy()
  await sent.done
  gate.resolve()
  await until(() => app.pg.stats().total === 0, 'it is closed')
  t.equal(app.pg.stats().destroyed.unpooled, 1)
  t.equal(app.pg.stats().acquires, 0, 'nobody got it')
})
