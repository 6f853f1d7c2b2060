/**
 * Reproduces (adversarial pass): two statements that change the session were not read as such.
 * DEALLOCATE in one request removed a statement pg still believed prepared: the next request's
 * named query failed with 26000 until the connection was recycled. UNLISTEN removed the LISTEN
 * onConnect made, for every later holder of the connection.
 * Now: both mark the session for reset (DISCARD ALL, pg's record of prepared statements emptied,
 * onConnect run again).
 */
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)
for (const stmt of ['deallocate all', 'deallocate by_id', 'deallocate prepare by_id']) {
  t.test(`${stmt} in one request breaks named queries of the next`, async (t) => {
    const app = await buildApp(t, db, { max: 1 })
    app.get('/named', async (req) => (await req.db.query({ name: 'by_id', text: 'select $1::int as n', values: [1] })).rows[0])
    app.get('/dealloc', async (req) => { await req.db.query(stmt); return 'ok' })
    t.equal((await app.inject('/named')).statusCode, 200)
    t.equal((await app.inject('/dealloc')).statusCode, 200)
    const res = await app.inject('/named')
    t.equal(res.statusCode, 200, `the next request's named query works: ${res.body}`)
  })
}

t.test("UNLISTEN * in one request removes onConnect's LISTEN for the next", async (t) => {
  const app = await buildApp(t, db, { max: 1, onConnect: async (client) => { await client.query('listen jobs') } })
  app.get('/channels', async (req) => (await req.db.query('select array(select pg_listening_channels()) as c')).rows[0].c)
  app.get('/unlisten', async (req) => { await req.db.query('unlisten *'); return 'ok' })
  t.same((await app.inject('/channels')).json(), ['jobs'])
  await app.inject('/unlisten')
  t.same((await app.inject('/channels')).json(), ['jobs'], "the next holder still has onConnect's LISTEN")
})
