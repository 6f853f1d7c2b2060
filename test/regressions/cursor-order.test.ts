/**
 * Reproduces (second adversarial pass): for a while `connection()` clients sent their plain
 * statements through the request's queue and their cursors straight to pg, so a cursor overtook
 * statements issued before it (it saw 1 of 2 inserts), and one of those then waited behind the
 * suspended cursor forever.
 * Now: a `connection()` client hands everything to pg in call order, as pg does (the request's
 * queue is for `request.db.pool`, whose turns keep its statements in order).
 */
import t from 'tap'
import Cursor from 'pg-cursor'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)
await db.admin('create table co (n int)')

/** Two inserts, not awaited, then a cursor counting the rows: what the cursor saw. */
async function insertsThenCursor (c: { query: (...args: any[]) => any }): Promise<number> {
  const a = c.query('insert into co values (1)')
  const b = c.query('insert into co values (2)')
  const cur = c.query(new Cursor('select count(*)::int n from co'))
  const rows = await cur.read(10)
  await new Promise<void>((resolve) => cur.close(() => resolve()))
  await a; await b
  return rows[0].n
}

t.test('connection() client: statements issued before a cursor run before it (as with pg)', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req) => {
    await req.db.query('delete from co')
    return { seen: await insertsThenCursor(await req.db.connection()) }
  })
  const res = await app.inject('/')
  t.same(res.json(), { seen: 2 }, 'the cursor sees both inserts issued before it')
})

t.test('pg raw: same sequence', async (t) => {
  const pg = (await import('pg')).default
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  await c.query('delete from co')
  t.equal(await insertsThenCursor(c), 2)
  await c.end()
})

t.test('connection() client: await a statement issued before a partially-read cursor', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req) => {
    const c = await req.db.connection()
    const a = c.query('select 1 as one')
    const b = c.query('select 2 as two')
    const cur = c.query(new Cursor('select generate_series(1, 100) g'))
    const rows = await cur.read(1)
    const r = await Promise.race([b.then((x: any) => x.rows[0].two), new Promise((resolve) => setTimeout(() => resolve('HUNG'), 2000))])
    await new Promise<void>((resolve) => cur.close(() => resolve()))
    await a
    return { first: rows[0].g, b: r }
  })
  const res = await app.inject('/')
  t.same(res.json(), { first: 1, b: 2 }, 'b settles while the cursor is suspended (it was issued before the cursor)')
})
