/**
 * Reproduces (adversarial pass): a value pg cannot serialise (a BigInt inside an object given for
 * a jsonb parameter) made pg send the statement's Parse, then Close it, then Sync. pg recorded the
 * name as prepared, the server had closed it, and the plugin's cache still named it: the next
 * request running the same text inside a transaction failed with 26000.
 * Now: a failure without a server severity drops the statement (pg is told it is gone).
 */
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { code, tx } from '../helpers/ledger.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)

t.test('after a value that failed to serialise, the same text runs in a transaction', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const TEXT = 'select $1::jsonb as j'
  app.get('/bad', async (req) => await req.db.query(TEXT, [{ a: 1n }]).then(() => 'ran', (e: Error) => e instanceof TypeError ? 'TypeError' : code(e)))
  app.get('/route', tx, async (req) => (await req.db.query(TEXT, [{ a: 1 }])).rows[0])
  app.get('/fn', async (req) => await req.db.transaction(async (db) => (await db.query(TEXT, [{ a: 2 }])).rows[0]))
  t.equal((await app.inject('/bad')).body, 'TypeError')
  const route = await app.inject('/route')
  t.equal(route.statusCode, 200, route.body)
  t.same(route.json(), { j: { a: 1 } })
  t.same((await app.inject('/fn')).json(), { j: { a: 2 } })
})
