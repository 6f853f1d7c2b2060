/**
 * A request aborted mid-statement on a connection over TLS: the plugin's CancelRequest opens a
 * connection of its own with the client's `ssl` and `sslnegotiation` (an SSLRequest, then the
 * cancel inside TLS; or TLS at once with `sslnegotiation: 'direct'`), and the statement stops.
 * The server is a PostgreSQL of its own with `ssl=on` and a throwaway self-signed certificate;
 * it listens on a unix socket too, where the cancel goes the same way as the connection.
 */
import t from 'tap'
import { buildApp } from './helpers/app.js'
import { abortMidSleep } from './helpers/abort-cancel.js'
import { recorder, REQUEST_CODES, startTlsPostgres } from './helpers/tls-postgres.js'

const db = await startTlsPostgres(t)
const ssl = { rejectUnauthorized: false }

/** The url of `db` with another port (the recorder's). */
function through (port: number): string {
  const url = new URL(db.url)
  url.port = String(port)
  return url.toString()
}

t.test('the server takes TLS; the admin connection does not use it', async (t) => {
  const { rows } = await db.admin('select ssl from pg_stat_ssl where pid = pg_backend_pid()')
  t.same(rows, [{ ssl: false }])
})

t.test('abort mid-statement over TLS: cancelled on the server; the next request served within 1 s', async (t) => {
  const app = await buildApp(t, db, { max: 1, ssl })
  const { rows: [{ ssl: encrypted, version }] } = await app.pg.query('select ssl, version from pg_stat_ssl where pid = pg_backend_pid()')
  t.equal(encrypted, true, `the app's backend uses TLS (${String(version)})`)
  const { backend, nextBody } = await abortMidSleep(t, app, db, 'over TLS')
  const { rows: [row] } = await db.admin('select ssl from pg_stat_ssl where pid = $1', [backend])
  t.equal(row?.ssl, true, 'the cancelled backend is the TLS one')
  t.equal(nextBody, String(backend), 'the next request ran on the same backend: the connection was kept')
})

t.test('over TLS, the cancel itself goes over TLS: an SSLRequest opens its connection, never a plain CancelRequest', async (t) => {
  const wire = await recorder(t, db.port)
  const app = await buildApp(t, { ...db, url: through(wire.port) }, { max: 1, ssl })
  await abortMidSleep(t, app, db, 'over TLS, through a recorder')
  t.same(wire.openings.map((o) => o.code), [REQUEST_CODES.ssl, REQUEST_CODES.ssl], "two connections, each opened with an SSLRequest: the app's and the cancel's")
})

t.test("sslnegotiation: 'direct' (TLS at once, PostgreSQL 17+): the cancel starts TLS at once too", async (t) => {
  const wire = await recorder(t, db.port)
  const app = await buildApp(t, { ...db, url: through(wire.port) }, { max: 1, ssl, sslnegotiation: 'direct' })
  const { rows: [{ ssl: encrypted }] } = await app.pg.query('select ssl from pg_stat_ssl where pid = pg_backend_pid()')
  t.equal(encrypted, true, "the app's backend uses TLS")
  await abortMidSleep(t, app, db, "over TLS with sslnegotiation: 'direct'")
  t.equal(wire.openings.length, 2, "two connections: the app's and the cancel's")
  t.ok(wire.openings.every((o) => o.first === 0x16), 'each began with a TLS handshake record (no SSLRequest, no plain CancelRequest)')
})

t.test('through a unix socket: the cancel goes through the socket too', async (t) => {
  const app = await buildApp(t, { ...db, url: db.socketUrl }, { max: 1 })
  const { rows: [row] } = await app.pg.query('select client_addr is null as local from pg_stat_activity where pid = pg_backend_pid()')
  t.equal(row.local, true, "the app's backend is reached through the socket")
  await abortMidSleep(t, app, db, 'through a unix socket')
})
