/**
 * Reproduces (second adversarial pass): a statement `request.db` handed to pg while a COPY or a
 * cursor of the same request (through its `connection()` client) was still active waited in pg's
 * own queue; when the client aborted, the COPY was cancelled (or the cursor closed) and pg then
 * sent the statement anyway: an audit insert was written after the abort, its promise resolved.
 * Now: while pg is busy with what a `connection()` client handed it, the request's statements
 * wait in the request's queue, where the end of an aborted request refuses them unsent.
 */
import t from 'tap'
import Cursor from 'pg-cursor'
import { to as copyTo } from 'pg-copy-streams'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { listen, send, until } from '../helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table audit (what text)')
t.beforeEach(async () => { await db.admin('truncate audit') })

for (const kind of ['copy-to', 'cursor']) {
  t.test(`${kind}: an audit insert queued behind it is not written after the abort`, async (t) => {
    const app = await buildApp(t, db, { max: 1 })
    let audit: string | undefined
    let started = false
    app.get('/export', async (req, reply) => {
      const c = await req.db.connection()
      if (kind === 'copy-to') {
        const s = c.query(copyTo('copy (select g, pg_sleep(0.001) from generate_series(1, 100000) g) to stdout'))
        req.db.query("insert into audit values ('exported')").then(() => { audit = 'ok' }, (e) => { audit = e.code ?? e.message })
        started = true
        return reply.type('text/plain').send(s)
      }
      const cur = c.query(new Cursor('select g from generate_series(1, 1000) g'))
      await cur.read(1)
      req.db.query("insert into audit values ('exported')").then(() => { audit = 'ok' }, (e) => { audit = e.code ?? e.message })
      started = true
      // a slow consumer: the client leaves meanwhile
      await new Promise((resolve) => setTimeout(resolve, 300))
      await cur.read(1).catch(() => {})
      return 'done'
    })
    const url = await listen(app)
    const sent = send(`${url}/export`)
    await until(() => started, 'started')
    await new Promise((resolve) => setTimeout(resolve, 100))
    sent.req.destroy()
    await until(() => audit !== undefined, 'the audit insert settles', 5000).catch(() => {})
    await until(() => app.pg.stats().active === 0, 'back', 5000).catch(() => {})
    const { rows } = await db.admin('select what from audit')
    t.same(rows, [], `nothing written after the abort (the insert's promise: ${String(audit)})`)
    t.equal(audit, 'FST_PG_REQUEST_ENDED', 'the insert was refused, unsent')
    t.equal((await app.pg.query('select 7::int n')).rows[0].n, 7)
  })
}
