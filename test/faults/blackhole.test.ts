/**
 * Fault 4: a NAT or load balancer forgets the idle connections (bytes dropped, sockets left
 * open). Every request succeeds; only the first waits, about pingTimeoutMs, because its failed
 * ping condemns the other idle connections with it.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { burst, serve, summary } from '../helpers/fault.js'
import { proxied } from '../helpers/net.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)
const PING_TIMEOUT = 300

t.test('blackholed idle connections: zero failures, one ping-timeout wait', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, max: 5, pingIdleMs: 50, pingTimeoutMs: PING_TIMEOUT })
  const request = await serve(app)
  await burst(() => request(), 20, 5)
  t.equal(app.pg.stats().idle, 5)
  await sleep(100) // idle past pingIdleMs
  proxy.blackhole()
  const outcomes = await burst(() => request(), 20)
  const result = summary(outcomes)
  t.comment(`blackhole: ${JSON.stringify(result)}`)
  t.equal(result.failed, 0)
  const waited = outcomes.filter((o) => o.ms >= PING_TIMEOUT - 5)
  t.equal(waited.length, 1, 'only the first request waited for a ping timeout')
  t.ok(result.maxMs < PING_TIMEOUT + 500, 'and about pingTimeoutMs at that')
})
