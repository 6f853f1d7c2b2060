/**
 * Reproduces: a cursor on a `connection()` client, read partially and left open, inside a route
 * transaction (`config: { pgPool: { transaction: true } }`) and inside `req.db.transaction(fn)`.
 * The plugin's own COMMIT waited in pg's queue behind the suspended cursor: the request never
 * answered.
 * Now: before its own COMMIT/ROLLBACK the plugin closes the cursors opened through the
 * checkout's clients (a transaction's cursors end with it anyway); the request answers and the
 * transaction commits.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import Cursor from 'pg-cursor'
import t from 'tap'
import { assertReturned, buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { ledger, tx } from '../helpers/ledger.js'

const db = await setupDatabase(t)
const { notes, insert } = await ledger(t, db)

const SERIES = 'select i from generate_series(1, 100000) as i'

/** The injected response, or 'TIMEOUT' when none came within `ms`. */
const answer = async <T>(p: Promise<T>, ms: number): Promise<T | 'TIMEOUT'> =>
  await Promise.race([p, sleep(ms).then(() => 'TIMEOUT' as const)])

t.test('route transaction: a cursor left open, the request answers and commits', async (t) => {
  const app = await buildApp(t, db, { max: 1, closeTimeoutMs: 200 })
  app.post('/', tx, async (req) => {
    await req.db.query(insert('route'))
    const client = await req.db.connection()
    const cursor = client.query(new Cursor(SERIES))
    return { read: (await cursor.read(5)).length }
  })
  const res = await answer(app.inject({ method: 'POST', url: '/' }), 3000)
  if (res === 'TIMEOUT') return t.fail('the request answered within 3 s')
  t.equal(res.statusCode, 200)
  t.same(res.json(), { read: 5 })
  t.same(await notes(), ['route'], 'the transaction committed')
  await assertReturned(t, app, db)
})

t.test('transaction(fn): a cursor left open inside, the call settles and commits', async (t) => {
  const app = await buildApp(t, db, { max: 1, closeTimeoutMs: 200 })
  app.post('/', async (req) => await req.db.transaction(async (tx) => {
    await tx.query(insert('fn'))
    const client = await tx.connection()
    const cursor = client.query(new Cursor(SERIES))
    return { read: (await cursor.read(5)).length }
  }))
  const res = await answer(app.inject({ method: 'POST', url: '/' }), 3000)
  if (res === 'TIMEOUT') return t.fail('the request answered within 3 s')
  t.equal(res.statusCode, 200)
  t.same(res.json(), { read: 5 })
  t.same(await notes(), ['fn'], 'the transaction committed')
  await assertReturned(t, app, db)
})
