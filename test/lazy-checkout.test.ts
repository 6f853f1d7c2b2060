import t from 'tap'
import { setupDatabase } from './helpers/postgres.js'
import { appBackends, buildApp } from './helpers/app.js'

const db = await setupDatabase(t)

t.test('a route that never touches request.db takes no connection', async (t) => {
  const app = await buildApp(t, db)
  app.get('/plain', async () => ({ ok: true }))
  const res = await app.inject('/plain')
  t.equal(res.statusCode, 200)
  const res404 = await app.inject('/nope')
  t.equal(res404.statusCode, 404)
  t.has(app.pg.stats(), { total: 0, idle: 0, active: 0, waiting: 0 })
  t.same(await appBackends(db), [])
})

t.test('the first query checks out; the connection is back in the pool after the reply', async (t) => {
  const app = await buildApp(t, db)
  app.get('/one', async (req) => {
    const { rows } = await req.db.query<{ n: number }>('select 1 as n')
    return rows[0]
  })
  const res = await app.inject('/one')
  t.equal(res.statusCode, 200)
  t.same(res.json(), { n: 1 })
  t.has(app.pg.stats(), { total: 1, idle: 1, active: 0, waiting: 0 })
})

t.test('concurrent first uses share one checkout', async (t) => {
  const app = await buildApp(t, db, { max: 5 })
  app.get('/many', async (req) => {
    const results = await Promise.all([
      req.db.query<{ pid: number }>('select pg_backend_pid() as pid'),
      req.db.query<{ pid: number }>('select pg_backend_pid() as pid'),
      req.db.query<{ pid: number }>('select pg_backend_pid() as pid'),
      req.db.connection().then((c) => c.query<{ pid: number }>('select pg_backend_pid() as pid'))
    ])
    return results.map((r) => r.rows[0]?.pid)
  })
  const res = await app.inject('/many')
  const pids = res.json<number[]>()
  t.equal(pids.length, 4)
  t.equal(new Set(pids).size, 1, 'all four statements ran on one backend')
  t.equal(app.pg.stats().total, 1, 'one connection was opened')
})
