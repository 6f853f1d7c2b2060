/**
 * Reproduces: a client released from the callback of a statement that failed (pg calls back at
 * the ErrorResponse, before it reads the ReadyForQuery that follows) looked busy, so the pool
 * sent a CancelRequest (a connection of its own to the server) for a statement that had already
 * ended, and held the connection until the cancel was acknowledged. The same race, rarer, for
 * any request or `pool.query()` whose last statement failed while the two messages arrived in
 * separate reads.
 * Now: a failed statement whose ReadyForQuery is still to come is waited for, not cancelled.
 */
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { until } from '../helpers/util.js'

const db = await setupDatabase(t)

t.test('released inside the error callback: no cancel, pooled clean, reused', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const client = await app.pg.pool.connect()
  const pid = (await client.query('select pg_backend_pid() as pid')).rows[0].pid
  const code = await new Promise((resolve) => {
    client.query('select nope', (err: Error & { code?: string }) => {
      client.release()
      resolve(err.code)
    })
  })
  t.equal(code, '42703')
  await until(() => app.pg.pool.idleCount === 1, 'back in the pool')
  t.equal(app.pg.stats().cancels, 0, 'no CancelRequest was sent')
  t.equal(app.pg.stats().destroyed.stuck, 0)
  const again = await app.pg.pool.connect()
  t.equal((await again.query('select pg_backend_pid() as pid')).rows[0].pid, pid, 'the same connection, pooled again')
  again.release()
})
