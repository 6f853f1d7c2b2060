/**
 * Reproduces: the connection went back when the response closed, which for a client reading a
 * large reply slowly is when it has read the last byte. A slow reader held a database
 * connection it no longer needed, for as long as it took to read (and pool capacity with it).
 * Now: the connection goes back when the reply is complete (`res.end()`, its 'prefinish'), not
 * when it has been flushed to the client.
 */
import net from 'node:net'
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { listen, until } from '../helpers/util.js'

const db = await setupDatabase(t)

t.test('a 16 MB reply to a client that does not read: the connection is back before the reply is flushed', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  let finished = false
  app.get('/big', async (req, reply) => {
    const { rows: [row] } = await req.db.query('select 1 as n')
    reply.raw.once('finish', () => { finished = true })
    return 'x'.repeat(16 * 1024 * 1024) + String(row.n)
  })
  const url = new URL(await listen(app))
  // A client that sends its request and never reads: the reply stays in the socket buffers.
  const socket = net.connect(Number(url.port), url.hostname)
  t.teardown(() => { socket.destroy() })
  socket.pause()
  socket.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n')
  await until(() => app.pg.stats().acquires === 1, 'the request checked out')
  await until(() => app.pg.stats().active === 0, 'the connection is back')
  t.equal(finished, false, 'while the reply is still being flushed to the client')
  t.same((await app.pg.query('select 2 as n')).rows, [{ n: 2 }], 'and serves another holder (max 1)')
})
