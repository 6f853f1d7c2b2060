/** fastify.pg: the pool, a one-off query outside any request, and stats. */
import t from 'tap'
import { buildApp } from './helpers/app.js'
import { setTimeout as sleep } from 'node:timers/promises'
import { setupDatabase } from './helpers/postgres.js'
import { until } from './helpers/util.js'

const db = await setupDatabase(t)

t.test('fastify.pg.query runs a statement and returns the connection', async (t) => {
  const app = await buildApp(t, db)
  const { rows } = await app.pg.query<{ sum: number }>('select $1::int + $2::int as sum', [2, 3])
  t.same(rows, [{ sum: 5 }])
  const named = await app.pg.query({ text: 'select $1::text as v', values: ['x'] })
  t.same(named.rows, [{ v: 'x' }])
  t.has(app.pg.stats(), { total: 1, idle: 1, active: 0, waiting: 0 })
  await t.rejects(app.pg.query('select * from missing_table'), { code: '42P01' })
  // pg rejects on the server's error message; the connection is ready again at ReadyForQuery.
  await until(() => app.pg.stats().idle === 1, 'the connection is back')
  t.has(app.pg.stats(), { total: 1, idle: 1, active: 0, waiting: 0 }, 'a statement error keeps the connection')
})

t.test('pool counters follow pg-pool names', async (t) => {
  const app = await buildApp(t, db, { max: 2 })
  const a = await app.pg.pool.connect()
  t.equal(app.pg.pool.totalCount, 1)
  t.equal(app.pg.pool.idleCount, 0)
  t.equal(app.pg.pool.waitingCount, 0)
  a.release()
  t.equal(app.pg.pool.idleCount, 1)
})

t.test('idle connections past idleTimeoutMillis are closed, down to min', async (t) => {
  const app = await buildApp(t, db, { max: 3, min: 1, idleTimeoutMillis: 50 })
  const clients = await Promise.all([app.pg.pool.connect(), app.pg.pool.connect(), app.pg.pool.connect()])
  for (const c of clients) c.release()
  t.equal(app.pg.stats().idle, 3)
  await until(() => app.pg.stats().total === 1, 'idle connections are closed down to min')
  await sleep(120)
  t.equal(app.pg.stats().total, 1, 'min stays open')
})

t.test('only connections idle past idleTimeoutMillis are closed', async (t) => {
  const app = await buildApp(t, db, { max: 2, idleTimeoutMillis: 200 })
  const [old, young] = await Promise.all([app.pg.pool.connect(), app.pg.pool.connect()])
  old.release()
  await sleep(150)
  young.release()
  await until(() => app.pg.stats().total === 1, 'the long-idle connection is closed')
  t.equal(app.pg.stats().total, 1, 'the recently used one was kept')
  await until(() => app.pg.stats().total === 0, 'with min 0, the last idle connection is closed too')
})

t.test('maxUses retires a connection after that many checkouts', async (t) => {
  const app = await buildApp(t, db, { max: 1, maxUses: 2 })
  const pid = async (): Promise<number> => (await app.pg.query('select pg_backend_pid() as pid')).rows[0].pid
  const first = await pid()
  t.equal(await pid(), first)
  t.not(await pid(), first, 'a new connection after two uses')
})

t.test('onConnect runs on every new connection; a failing one is a 503', async (t) => {
  let calls = 0
  const app = await buildApp(t, db, {
    onConnect: async (client) => {
      calls++
      await client.query("set application_name = 'from-on-connect'")
    }
  })
  const { rows } = await app.pg.query('select current_setting(\'application_name\') as name')
  t.same(rows, [{ name: 'from-on-connect' }])
  t.equal(calls, 1)

  const both = await buildApp(t, db, {
    onConnect: () => { calls++ },
    verify: (_client, done) => done()
  })
  t.same((await both.pg.query('select 1 as n')).rows, [{ n: 1 }], 'verify passing lets the connection through')
  t.equal(calls, 2, 'onConnect ran before verify')

  const failing = await buildApp(t, db, { verify: (_client, done) => done(new Error('not this one')) })
  await t.rejects(failing.pg.query('select 1'), { code: 'FST_PG_UNAVAILABLE', message: /not this one/ })
  t.equal(failing.pg.stats().total, 0)
})
