/**
 * Fault 7: failover. The address the app uses (a proxy) switches from server A to server B,
 * and the idle connections to A are blackholed, as when a virtual IP or DNS moves. Zero failed
 * requests after the switch, and one ping-timeout wait in all, not one per idle connection.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import t from 'tap'
import pgPool from '../../src/index.js'
import { burst, serve, summary } from '../helpers/fault.js'
import { EmbeddedServer } from '../helpers/postgres.js'
import { TcpProxy } from '../helpers/proxy.js'

const [a, b] = [new EmbeddedServer(), new EmbeddedServer()]
await Promise.all([a.start(), b.start()])
t.teardown(() => Promise.all([a.stop(), b.stop()]))

const PING_TIMEOUT = 400

t.test('switch from A to B with A blackholed', async (t) => {
  const proxy = await TcpProxy.start(a.port)
  t.teardown(() => proxy.close())
  const app = Fastify()
  await app.register(pgPool, {
    connectionString: `postgres://postgres:postgres@127.0.0.1:${proxy.port}/postgres`,
    max: 6,
    pingIdleMs: 50,
    pingTimeoutMs: PING_TIMEOUT
  })
  t.teardown(() => app.close())
  const request = await serve(app)
  const before = await burst(() => request(), 30, 6)
  t.ok(before.every((o) => o.body.port === a.port), 'served by A')
  t.equal(app.pg.stats().idle, 6, 'six idle connections to A')

  await sleep(100) // idle past pingIdleMs
  proxy.blackhole()
  proxy.retarget(b.port)
  const start = performance.now()
  const after = await burst(() => request(), 30)
  const totalMs = performance.now() - start
  const result = summary(after)
  t.comment(`failover: ${JSON.stringify(result)}, all 30 requests in ${Math.round(totalMs)} ms`)
  t.equal(result.failed, 0, 'zero failed requests after the switch')
  t.ok(after.every((o) => o.body.port === b.port), 'all served by B')
  t.equal(after.filter((o) => o.ms >= PING_TIMEOUT - 5).length, 1, 'one request waited for a ping timeout')
  // One wait per idle connection would take six ping timeouts at least.
  t.ok(totalMs < 5 * PING_TIMEOUT, 'not one wait per idle connection')
})
