/**
 * A request aborted mid-statement behind a real PgBouncer (Debian's package, 1.18) in
 * transaction mode: the plugin's CancelRequest goes to PgBouncer (the client's host and port,
 * with the pid and key PgBouncer gave the client), and PgBouncer forwards it to the server
 * connection running the statement. Skipped with a message when pgbouncer is not installed; a
 * failure when CI=true.
 */
import t from 'tap'
import { buildApp } from './helpers/app.js'
import { abortMidSleep } from './helpers/abort-cancel.js'
import { PgBouncer, pgbouncerOrSkip } from './helpers/pgbouncer.js'
import { setupDatabase } from './helpers/postgres.js'

const found = pgbouncerOrSkip()
if ('skip' in found) {
  t.comment(found.skip)
  t.plan(0, found.skip)
} else {
  const db = await setupDatabase(t)
  const bouncer = await PgBouncer.start(t, found.binary, db, { poolSize: 2 })

  t.test('abort mid-statement through PgBouncer: cancelled on the server; the next request served within 1 s', async (t) => {
    const app = await buildApp(t, { ...db, url: bouncer.url }, { pgbouncer: true, max: 1 })
    await abortMidSleep(t, app, db, 'through PgBouncer (transaction mode)')
    // The server connection that ran the sleep went back to PgBouncer's pool, not closed.
    const pools = await bouncer.admin<{ database: string, sv_active: string, sv_idle: string, sv_used: string }>('show pools')
    const pool = pools.find((row) => row.database === bouncer.database)
    t.ok(pool !== undefined, 'PgBouncer has a pool for the test database')
    t.equal(Number(pool?.sv_active), 0, 'no server connection is still active in PgBouncer')
  })
}
