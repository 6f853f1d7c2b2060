/**
 * Reproduces: a pooled connection is pinged before it is handed out (pingIdleMs 0), and its
 * maxLifetimeMs passes while the ping is under way (the network holds it). The checkout handed
 * the connection out anyway once the ping came back: a connection past its lifetime served a
 * request.
 * Now: after the ping the checkout looks at the connection again; one whose lifetime ended is
 * closed (destroyed for 'lifetime') and never handed out: the request gets another connection.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { appBackends, buildApp } from '../helpers/app.js'
import { proxied } from '../helpers/net.js'
import { setupDatabase } from '../helpers/postgres.js'
import { until } from '../helpers/util.js'

const db = await setupDatabase(t)

t.test('maxLifetimeMs passes during the ping: the old connection is not handed out', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const maxLifetimeMs = 1000
  const app = await buildApp(t, db, { max: 1, connectionString: url, pingIdleMs: 0, pingTimeoutMs: 5000, maxLifetimeMs, maxLifetimeJitter: 0 })
  app.get('/', async (req) => (await req.db.query('select pg_backend_pid() as pid')).rows[0])

  const first = await app.inject('/')
  t.equal(first.statusCode, 200)
  const { pid } = first.json()
  t.equal(app.pg.stats().destroyed.lifetime, 0, 'the first connection is still within its lifetime')

  proxy.hold()
  const second = app.inject('/')
  await until(() => app.pg.stats().pings === 1, 'the ping is under way')
  // Pinged: the connection was idle and within its lifetime. Its lifetime timer was set when it
  // opened, before this wait, and ends first: it passes while the ping is held.
  await sleep(maxLifetimeMs + 200)
  proxy.resume()

  const res = await Promise.race([second, sleep(5000).then(() => 'TIMEOUT' as const)])
  if (res === 'TIMEOUT') return t.fail('the second request was answered within 5 s')
  t.equal(res.statusCode, 200, 'the request is served')
  t.not(res.json().pid, pid, 'by another connection, not the one past its lifetime')
  t.equal(app.pg.stats().destroyed.lifetime, 1, 'the expired connection was closed for its lifetime')
  await until(async () => !(await appBackends(db)).some((backend) => backend.pid === pid), 'the expired backend is gone')
})
