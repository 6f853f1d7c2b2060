/**
 * pg reports a failed statement at its ErrorResponse, before the ReadyForQuery that says the
 * transaction is now failed. When the two arrive in separate reads, the status pg shows in
 * between is the old one; the plugin must not end a transaction level on it (it waits for pg's
 * 'drain'). A probe: the relay here holds back the end of every read from the server for a
 * moment; it passes with and without that wait (the flaky failure that led to it was seen once
 * in a full run under load, and is not reproduced by this relay).
 */
import { connect, createServer } from 'node:net'
import t from 'tap'
import { assertReturned, buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)
await db.admin('create table ledger (note text)')

async function trickle (): Promise<string> {
  const url = new URL(db.url)
  const target = Number(url.port)
  const server = createServer((client) => {
    const upstream = connect(target, '127.0.0.1')
    client.pipe(upstream)
    // Each read's last 6 bytes (a ReadyForQuery, when the read ends one) go on a moment later.
    upstream.on('data', (chunk: Buffer) => {
      upstream.pause()
      client.write(chunk.subarray(0, -6))
      setTimeout(() => {
        client.write(chunk.subarray(-6))
        upstream.resume()
      }, 2)
    })
    client.on('error', () => upstream.destroy())
    upstream.on('error', () => client.destroy())
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  url.port = String((server.address() as { port: number }).port)
  return url.toString()
}

t.test('a nested level whose failure was caught, its ReadyForQuery read apart from the error: rolled back to its savepoint, the outer level goes on', async (t) => {
  const app = await buildApp(t, db, { connectionString: await trickle() })
  app.post('/', async (req) => await req.db.transaction(async (tx) => {
    await tx.query("insert into ledger values ('outer')")
    const inner = await tx.transaction(async (inner) => {
      await inner.query('select 1 / 0').catch(() => 'swallowed')
    }).catch((error: { code?: unknown }) => error.code)
    await tx.query("insert into ledger values ('after')")
    return { inner }
  }))
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(res.json(), { inner: 'FST_PG_TRANSACTION_ABORTED' })
  t.same((await db.admin('select note from ledger order by note')).rows.map((r) => r.note), ['after', 'outer'])
  await assertReturned(t, app, db)
})
