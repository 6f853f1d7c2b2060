/**
 * Fault 6: a backend killed while its query runs. That request gets a clean 5xx, its
 * connection is destroyed, and the next requests succeed.
 */
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { burst, serve, summary } from '../helpers/fault.js'
import { setupDatabase } from '../helpers/postgres.js'
import { until } from '../helpers/util.js'

const db = await setupDatabase(t)

t.test('backend killed mid-query: one clean 5xx, then success', async (t) => {
  const app = await buildApp(t, db, { max: 2 })
  app.get('/slow', async (req) => (await req.db.query('select pg_sleep(30)')).rows)
  const request = await serve(app)
  const slow = request('/slow')
  let pid = 0
  await until(async () => {
    const { rows } = await db.admin("select pid from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")
    pid = rows[0]?.pid ?? 0
    return pid !== 0
  }, 'the slow query runs')
  await db.admin('select pg_terminate_backend($1)', [pid])
  const killed = await slow
  t.equal(killed.status, 500, 'a clean 5xx')
  t.match(killed.body, { statusCode: 500, code: 'FST_PG_CONNECTION_LOST', message: /may or may not have taken effect/ })
  const after = await burst(() => request(), 20, 2)
  const result = summary(after)
  t.comment(`kill mid-query, after: ${JSON.stringify(result)}`)
  t.equal(result.failed, 0)
  t.notOk(after.some((o) => o.body.pid === pid), 'the killed connection was never reused')
})
