/**
 * Reproduces (adversarial pass): cursors and streams open when the client aborted.
 * - A read pending on a cursor whose statement ran never settled: closing the cursor dropped the
 *   read's callback (pg-cursor marks itself done and ignores the cancel's error), so a handler
 *   awaiting Kysely's `.stream()` or a bare `cursor.read()` hung for good.
 * - A cursor still in pg's queue behind a statement of the same request was sent after the abort
 *   (rows reached the handler for `cancelGraceMs`), then the connection was destroyed as stuck and
 *   the stream never settled.
 * Now: pending reads fail with FST_PG_CANCELLED before the cursor is closed; a queued cursor is
 * taken out of pg's queue, never sent, and fails the same way; the connection is pooled again.
 */
import t from 'tap'
import pg from 'pg'
import Cursor from 'pg-cursor'
import QueryStream from 'pg-query-stream'
import { Kysely, PostgresDialect, sql as ksql } from 'kysely'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { listen, send, until } from '../helpers/util.js'

const db = await setupDatabase(t)
const sleeping = async (): Promise<number> => (await db.admin("select count(*)::int n from pg_stat_activity where query like '%pg_sleep(5)%' and state='active' and pid<>pg_backend_pid()")).rows[0].n

for (const kind of ['kysely', 'cursor', 'query-stream']) {
  t.test(`${kind}: a stream whose statement runs at the abort settles in the handler`, async (t) => {
    const app = await buildApp(t, db, { max: 1 })
    let settled: string | undefined
    app.get('/', async (req) => {
      try {
        if (kind === 'kysely') {
          const k = new Kysely<any>({ dialect: new PostgresDialect({ pool: req.db.pool, cursor: Cursor }) })
          const q = k.selectFrom(ksql`(select pg_sleep(5) as s)`.as('t')).selectAll()
          for await (const row of q.stream(10)) t.fail(`no row expected: ${JSON.stringify(row)}`)
        } else if (kind === 'cursor') {
          const c = await req.db.connection()
          const cursor = c.query(new Cursor('select pg_sleep(5) as s'))
          await cursor.read(10)
        } else {
          const c = await req.db.connection()
          for await (const row of c.query(new QueryStream('select pg_sleep(5) as s'))) t.fail(`no row expected: ${JSON.stringify(row)}`)
        }
        settled = 'ended'
      } catch (e) {
        settled = `rejected: ${(e as Error).message}`
      }
      return 'x'
    })
    const url = await listen(app)
    const sent = send(`${url}/`)
    await until(async () => (await sleeping()) > 0, 'the statement runs')
    sent.req.destroy()
    await until(async () => (await sleeping()) === 0, 'the statement stops', 2000)
    await until(() => settled !== undefined, 'the handler settles', 3000).catch(() => {})
    t.not(settled, undefined, `the handler's stream settles (got: ${String(settled)})`)
    if (kind !== 'query-stream') t.match(settled, /rejected: The statement was cancelled because its request ended/)
    await until(() => app.pg.stats().idle === 1, 'the connection is pooled again')
    t.equal(app.pg.stats().destroyed.stuck, 0)
  })
}

t.test('a queued Kysely stream is not run after the abort, and the handler settles', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  let aborted = false
  let rowsAfterAbort = 0
  let settled: string | undefined
  let client: { _queryQueue: unknown[] } | undefined
  app.get('/', async (req) => {
    // (The client Kysely checks out, to see its cursor queued in pg before the abort.)
    const pool = req.db.pool
    const connect = pool.connect.bind(pool)
    const seen = Object.assign(Object.create(pool) as typeof pool, {
      connect: async () => {
        const got = await connect()
        client = got as unknown as { _queryQueue: unknown[] }
        return got
      }
    })
    const k = new Kysely<any>({ dialect: new PostgresDialect({ pool: seen, cursor: Cursor }) })
    // A fire-and-forget statement of the request (an audit insert, a slow lookup)...
    req.db.query('select pg_sleep(1)').catch(() => {})
    // ...and a stream queued behind it.
    try {
      const q = k.selectFrom(ksql`(select g, pg_sleep(0.01) as s from generate_series(1, 100000) g)`.as('t')).selectAll()
      for await (const row of q.stream(1)) if (row !== undefined && aborted) rowsAfterAbort++
      settled = 'ended'
    } catch (e) {
      settled = `rejected: ${(e as Error).message}`
    }
    return 'x'
  })
  const url = await listen(app)
  const sent = send(`${url}/`)
  // The abort comes once the stream's cursor waits in pg's queue behind the sleep (a fixed delay
  // was too short for a loaded machine: the stream was then refused before it was queued).
  await until(() => (client?._queryQueue.length ?? 0) > 0, "the stream's cursor is queued behind the sleep", 5000)
  aborted = true
  sent.req.destroy()
  await until(() => settled !== undefined, 'the handler stream settles', 3000).catch(() => {})
  t.equal(rowsAfterAbort, 0, 'no rows of a statement sent after the request ended')
  t.match(settled, /rejected: The statement was cancelled because its request ended/, 'the stream fails, as cancelled')
  await until(() => app.pg.stats().idle === 1, 'the connection is pooled again, not destroyed')
  t.same(app.pg.stats().destroyed, { ...app.pg.stats().destroyed, stuck: 0, error: 0 })
})

t.test("a cursor class of the user's (close() but not pg-cursor's insides) left open at the end: closed, nothing thrown", async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  let closed = 0
  class OwnCursor extends pg.Query {
    close (callback: () => void): void {
      closed++
      callback()
    }
  }
  app.get('/', async (req) => {
    const client = await req.db.connection()
    client.query(new OwnCursor('select 1 as n'))
    return 'ok'
  })
  t.equal((await app.inject('/')).statusCode, 200)
  await until(() => closed === 1, 'closed when the request ended')
  t.equal((await app.pg.query('select 2 as n')).rows[0].n, 2, 'the pool goes on')
})
