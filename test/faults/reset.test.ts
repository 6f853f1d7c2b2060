/** Fault 5: idle connections reset (RST), at once or at the next packet. Every request succeeds. */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { burst, serve, summary } from '../helpers/fault.js'
import { proxied } from '../helpers/net.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)

t.test('idle connections reset: zero failures', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, max: 5 })
  const request = await serve(app)
  await burst(() => request(), 20, 5)
  proxy.reset()
  const result = summary(await burst(() => request(), 30, 5))
  t.comment(`reset: ${JSON.stringify(result)}`)
  t.equal(result.failed, 0)
})

t.test('idle connections forgotten (RST on the next packet): zero failures, no waiting', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, max: 5, pingIdleMs: 50, pingTimeoutMs: 5000 })
  const request = await serve(app)
  await burst(() => request(), 20, 5)
  await sleep(100)
  proxy.forget()
  const result = summary(await burst(() => request(), 30, 5))
  t.comment(`reset on next packet: ${JSON.stringify(result)}`)
  t.equal(result.failed, 0)
  t.ok(result.maxMs < 1000, 'a reset ping fails at once')
})
