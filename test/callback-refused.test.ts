/**
 * pg's callback style on `request.db.query()`: the function would never be called back (the
 * plugin returns a promise), so the call is refused at once with a coded error, before anything
 * is checked out or sent.
 */
import t from 'tap'
import { buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'

const db = await setupDatabase(t)

const code = (fn: () => unknown): unknown => {
  try {
    fn()
  } catch (error) {
    return (error as { code?: unknown }).code
  }
  return 'no throw'
}

t.test('request.db.query(text, cb) and (text, values, cb): FST_PG_CALLBACK at once, nothing checked out', async (t) => {
  const app = await buildApp(t, db)
  let called = 0
  const cb = (): void => { called++ }
  app.get('/', async (req) => {
    const thrown = [
      code(() => (req.db.query as (...a: unknown[]) => unknown)('select 1', cb)),
      code(() => (req.db.query as (...a: unknown[]) => unknown)('select 1', [], cb)),
      code(() => (req.db.query as (...a: unknown[]) => unknown)(cb))
    ]
    return { thrown, acquires: app.pg.stats().acquires }
  })
  const res = await app.inject('/')
  t.same(res.json(), { thrown: ['FST_PG_CALLBACK', 'FST_PG_CALLBACK', 'FST_PG_CALLBACK'], acquires: 0 })
  t.equal(called, 0, 'the callback is never called')
  t.equal(app.pg.stats().total, 0, 'no connection was opened')
})

t.test("a transaction's db refuses a callback the same way; the transaction goes on", async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => await req.db.transaction(async (tx) => {
    const thrown = code(() => (tx.query as (...a: unknown[]) => unknown)('select 1', [], () => {}))
    const { rows } = await tx.query('select 1 as n')
    return { thrown, n: rows[0].n }
  }))
  t.same((await app.inject('/')).json(), { thrown: 'FST_PG_CALLBACK', n: 1 })
})

t.test('thrown from a handler: a 500 with the code', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => await (req.db.query as (...a: unknown[]) => Promise<unknown>)('select 1', () => {}))
  const res = await app.inject('/')
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_PG_CALLBACK')
})
