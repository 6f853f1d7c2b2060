/**
 * Reproduces: a handler opens a cursor on `req.db.connection()`, reads a few rows (the cursor is
 * left suspended), fires `req.db.query(insert)` without awaiting it and answers 200. The insert
 * waited in pg's queue behind the suspended cursor, so the request's statement never settled and
 * its connection stayed checked out until app.close() (active 1 for good; with `max: 1` every
 * later request waited for it).
 * Now: the cursors opened through the request's clients are closed when the request ends, the
 * insert runs, and the connection returns to the pool.
 */
import Cursor from 'pg-cursor'
import t from 'tap'
import { assertReturned, buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { until } from '../helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table audit (note text)')

/** Whether `condition` holds within `ms` (false, not a throw, when it does not). */
const within = async (condition: () => boolean | Promise<boolean>, ms: number): Promise<boolean> =>
  await until(condition, 'the condition holds', ms).then(() => true, () => false)

t.test('a suspended cursor and a fire-and-forget statement: the statement runs, the connection comes back', async (t) => {
  const app = await buildApp(t, db, { max: 1, closeTimeoutMs: 200 })
  let outcome: unknown = 'pending'
  app.get('/', async (req) => {
    const client = await req.db.connection()
    const cursor = client.query(new Cursor('select i from generate_series(1, 100000) as i'))
    const rows = await cursor.read(5)
    // Fired and forgotten: queued in pg behind the suspended cursor.
    req.db.query("insert into audit values ('fired and forgotten')").then(
      () => { outcome = 'inserted' },
      (error: { code?: unknown }) => { outcome = error.code }
    )
    return { read: rows.length }
  })
  const res = await app.inject('/')
  t.equal(res.statusCode, 200)
  t.same(res.json(), { read: 5 })

  const inserted = async (): Promise<boolean> => (await db.admin("select 1 from audit where note = 'fired and forgotten'")).rowCount === 1
  t.ok(await within(inserted, 3000), 'the fire-and-forget insert ran within 3 s')
  const counts = (): { total: number, idle: number, active: number } => {
    const { total, idle, active } = app.pg.stats()
    return { total, idle, active }
  }
  const back = await within(() => counts().active === 0 && counts().idle === 1, 3000)
  t.ok(back, `the connection is back in the pool within 3 s (${JSON.stringify(counts())})`)
  t.equal(outcome, 'inserted', 'the handler\'s promise settled with the insert')
  if (back) await assertReturned(t, app, db)
})
