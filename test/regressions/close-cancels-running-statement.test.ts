/**
 * Reproduces: app.close() while a request's statement (`pg_sleep(5)`) runs past closeTimeoutMs.
 * close() destroyed the socket, but PostgreSQL went on running the statement (a backend only
 * notices a dead client when it next writes to it): after close() resolved, the app's backend
 * was still `active` on the server.
 * Now: past closeTimeoutMs the plugin cancels what still runs (CancelRequest) before it closes
 * the connections: once `await app.close()` returns, no backend of the app is active, and the
 * request is answered with the cancellation.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { appBackends, buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { listen, send, until } from '../helpers/util.js'

const db = await setupDatabase(t)

t.test('close while a statement runs past closeTimeoutMs: the statement is cancelled, no backend stays active', async (t) => {
  const app = await buildApp(t, db, { max: 1, closeTimeoutMs: 100 })
  app.get('/', async (req) => (await req.db.query('select pg_sleep(5)')).rows)
  const url = await listen(app)
  const request = send(url)
  await until(async () => (await db.admin(
    "select 1 from pg_stat_activity where application_name = 'fpp-app' and state = 'active' and query like 'select pg_sleep(5)%'"
  )).rowCount === 1, 'the statement runs on the server')

  const started = Date.now()
  const closed = await Promise.race([app.close().then(() => true), sleep(3000).then(() => false)])
  t.ok(closed, `app.close() finished within 3 s (took ${Date.now() - started} ms)`)
  const active = (await appBackends(db)).filter((backend) => backend.state === 'active')
  t.same(active, [], 'once close() resolved, no backend of the app is active on the server')

  const outcome = await Promise.race([request.done, sleep(3000).then(() => 'TIMEOUT' as const)])
  if (outcome === 'TIMEOUT' || outcome instanceof Error) return t.fail(`the request was answered within 3 s (${String(outcome)})`)
  t.equal(outcome.status, 503)
  t.equal(JSON.parse(outcome.body).code, 'FST_PG_CANCELLED', 'the request learns its statement was cancelled')
  await until(async () => (await appBackends(db)).length === 0, 'the backend is gone', 3000)
})
