/**
 * Fault 3: the server is stopped (fast, then immediate mode) while the pool holds idle
 * connections. During the outage: only coded 503s, fast. After the restart: the first request
 * succeeds, without restarting the app. The process never crashes.
 */
import Fastify from 'fastify'
import t from 'tap'
import pgPool from '../../src/index.js'
import { burst, serve, summary } from '../helpers/fault.js'
import { EmbeddedServer } from '../helpers/postgres.js'

const server = new EmbeddedServer({ persistent: true })
await server.start()
t.teardown(() => server.stop())

for (const mode of ['fast', 'immediate'] as const) {
  t.test(`${mode} shutdown and restart`, async (t) => {
    const app = Fastify()
    await app.register(pgPool, { connectionString: server.url(), max: 4, acquireTimeoutMs: 1000 })
    t.teardown(() => app.close())
    const request = await serve(app)
    t.equal(summary(await burst(() => request(), 12, 4)).failed, 0, 'warm pool')
    t.ok(app.pg.stats().idle >= 2, `${app.pg.stats().idle} idle connections before the stop`)

    await server.stop(mode)
    const outage = await burst(() => request(), 10, 2)
    t.comment(`restart (${mode}) during the outage: ${JSON.stringify(summary(outage))}`)
    t.ok(outage.every((o) => o.status === 503 && o.body.code === 'FST_PG_UNAVAILABLE'), 'only coded 503s')
    t.ok(outage.every((o) => o.ms < 1000), 'each answered at once, not at the deadline')

    await server.start()
    const after = await burst(() => request(), 20, 4)
    t.comment(`restart (${mode}) after: ${JSON.stringify(summary(after))}`)
    t.equal(after[0]?.status, 200, 'the first request after the restart succeeds')
    t.equal(summary(after).failed, 0)
  })
}
