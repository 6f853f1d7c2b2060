/**
 * The server ends an idle session (idle_session_timeout) while the pool still holds it as idle,
 * and the client reads the FATAL only after it sent a statement on it (a loaded event loop, or
 * the network, delays it). The statement never ran (57P05 is sent only while nothing runs): it
 * is sent again on a fresh connection, and the handler never sees the dead one.
 * `test/faults/idle-session-timeout.test.ts` failed 1 time in a CI run this way, as a 500
 * FST_PG_CONNECTION_LOST; here the race is made certain by withholding the server's replies.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { proxied } from '../helpers/net.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)

for (const via of ['request.db', 'fastify.pg.query'] as const) {
  t.test(`${via}: a statement that met a session the server had ended for idling runs on a fresh connection`, async (t) => {
    const { proxy, url } = await proxied(t, db)
    const app = await buildApp(t, db, { connectionString: url, options: '-c idle_session_timeout=200', max: 1, pingIdleMs: 60_000 })
    app.get('/', async (req) => (await req.db.query('select pg_backend_pid() as pid')).rows[0])
    const run = async (): Promise<{ status: number, body: any }> => {
      if (via === 'fastify.pg.query') {
        return await app.pg.query('select pg_backend_pid() as pid').then((r) => ({ status: 200, body: r.rows[0] }), (e) => ({ status: 500, body: { code: e.code } }))
      }
      const res = await app.inject('/')
      return { status: res.statusCode, body: res.json() }
    }
    const first = await run()
    t.equal(first.status, 200)
    proxy.withholdReplies()
    await sleep(500) // the server ends the session at 200 ms; its FATAL is kept from the client
    const { rows } = await db.admin('select count(*)::int as n from pg_stat_activity where pid = $1', [first.body.pid])
    t.equal(rows[0].n, 0, 'the server ended the idle session')
    const second = run()
    await sleep(100) // the statement is sent on the dead session
    proxy.releaseReplies()
    const result = await second
    t.equal(result.status, 200, 'answered')
    t.not(result.body.pid, first.body.pid, 'by a fresh connection')
    t.equal(app.pg.stats().destroyed.error, 1, 'the dead one was closed')
  })
}
