/**
 * Reproduces: listeners a request adds on its `req.db.connection()` client stayed on the pooled
 * pg client after the request ended: request A's 'notification' handler (after LISTEN) heard
 * request B's notification later on the same connection, and a listener added per request
 * piled up (one more 'notice' listener on the connection for every request).
 * Now: listeners added through the plugin's client are removed when the checkout ends.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { deferred } from '../helpers/util.js'

const db = await setupDatabase(t)

t.test("request A's notification listener does not hear request B's notification on the same connection", async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const heardByA: string[] = []
  app.get('/a', async (req) => {
    const client = await req.db.connection()
    client.on('notification', (msg) => { heardByA.push(String(msg.payload)) })
    await client.query('listen chan')
    return (await client.query('select pg_backend_pid() as pid')).rows[0]
  })
  app.get('/b', async (req) => {
    const client = await req.db.connection()
    const heard = deferred<string>()
    client.on('notification', (msg) => { heard.resolve(String(msg.payload)) })
    await client.query('listen chan')
    await db.admin("notify chan, 'secret-of-b'")
    const payload = await Promise.race([heard.promise, sleep(3000).then(() => 'nothing within 3 s')])
    return { payload, ...(await client.query('select pg_backend_pid() as pid')).rows[0] }
  })
  const a = await app.inject('/a')
  t.equal(a.statusCode, 200)
  const b = await app.inject('/b')
  t.equal(b.statusCode, 200)
  t.equal(b.json().pid, a.json().pid, 'both requests had the same pooled connection')
  t.equal(b.json().payload, 'secret-of-b', 'B heard its notification')
  // pg emits 'notification' to every listener at once: A's would have run before B's resolved.
  t.same(heardByA, [], 'an ended request hears nothing of a later request')
})

t.test('listeners added per request do not pile up on the pooled connection', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const counts: number[] = []
  const pids = new Set<number>()
  app.get('/', async (req) => {
    const client = await req.db.connection()
    client.on('notice', () => {})
    client.once('notification', () => {})
    counts.push(client.listenerCount('notice') + client.listenerCount('notification'))
    pids.add((await client.query('select pg_backend_pid() as pid')).rows[0].pid)
    return 'ok'
  })
  const statuses: number[] = []
  for (let i = 0; i < 20; i++) statuses.push((await app.inject('/')).statusCode)
  t.same(statuses, Array(20).fill(200))
  t.equal(pids.size, 1, 'every request had the same pooled connection')
  t.same(counts, Array(20).fill(counts[0]), `the count stays flat across requests (${counts.join(', ')})`)
})
