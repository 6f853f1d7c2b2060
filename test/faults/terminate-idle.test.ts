/** Fault 1: idle backends killed with pg_terminate_backend. The next 50 requests all succeed. */
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { burst, serve, summary } from '../helpers/fault.js'
import { setupDatabase } from '../helpers/postgres.js'
import { until } from '../helpers/util.js'

const db = await setupDatabase(t)

t.test('pg_terminate_backend on every idle connection: zero failed requests', async (t) => {
  const app = await buildApp(t, db, { max: 5 })
  const request = await serve(app)
  // Five connections, all idle, none idle long enough to be pinged by age.
  await burst(() => request(), 20, 5)
  const { rows } = await db.admin<{ pid: number }>(
    "select pg_terminate_backend(pid), pid from pg_stat_activity where application_name = 'fpp-app'")
  t.ok(rows.length >= 2, `${rows.length} idle backends terminated`)
  await until(async () => (await db.admin('select 1 from pg_stat_activity where pid = any($1)', [rows.map((r) => r.pid)])).rowCount === 0,
    'the server has ended them')
  const outcomes = await burst(() => request(), 50, 5)
  const result = summary(outcomes)
  t.comment(`terminate-idle: ${JSON.stringify(result)}`)
  t.equal(result.failed, 0, 'no request failed')
  t.notOk(outcomes.some((o) => rows.some((r) => r.pid === o.body.pid)), 'no terminated backend served')
})
