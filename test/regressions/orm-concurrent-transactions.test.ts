/**
 * Reproduces (adversarial pass): two transactions a library ran at once on `request.db.pool`
 * shared the one client. Their BEGIN/COMMIT/ROLLBACK interleaved on the connection: a transaction
 * that resolved was undone by the other's ROLLBACK, a rejected one left its rows committed, a
 * plain insert that resolved was rolled back. A pg.Pool of one would have made the second wait.
 * Now: `request.db.pool` gives the client to one holder at a time (`connect()` and `query()` wait
 * for the turn; `release()` ends it); a turn still awaited when the request ends is refused.
 */
import t from 'tap'
import { Kysely, PostgresDialect, type Generated } from 'kysely'
import { drizzle } from 'drizzle-orm/node-postgres'
import { pgTable, serial, text } from 'drizzle-orm/pg-core'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { listen, send, until } from '../helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table items (id serial primary key, name text not null)')
interface Schema { items: { id: Generated<number>, name: string } }
const items = pgTable('items', { id: serial('id').primaryKey(), name: text('name').notNull() })
const names = async (): Promise<string[]> => (await db.admin<{ name: string }>('select name from items order by name')).rows.map((r) => r.name)
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
t.beforeEach(async () => { await db.admin('truncate items') })

t.test('Kysely, route transaction: two at once take turns; the one that fails rolls back only itself', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', { config: { pgPool: { transaction: true } } }, async (req) => {
    const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
    const [a, b] = await Promise.allSettled([
      k.transaction().execute(async (trx) => {
        await trx.insertInto('items').values({ name: 'a' }).execute()
        await sleep(100)
      }),
      k.transaction().execute(async (trx) => {
        await sleep(20)
        await trx.insertInto('items').values({ name: 'b' }).execute()
        await sleep(200)
        throw new Error('b fails')
      })
    ])
    return { a: a.status, b: b.status }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { a: 'fulfilled', b: 'rejected' })
  t.same(await names(), ['a'], "a's transaction resolved and the route committed: a's row must be there, b's must not")
})

t.test('Kysely, no route transaction: the one that fails leaves nothing committed', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => {
    const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
    const [a, b] = await Promise.allSettled([
      k.transaction().execute(async (trx) => {
        await trx.insertInto('items').values({ name: 'a' }).execute()
        await sleep(100)
      }),
      k.transaction().execute(async (trx) => {
        await sleep(20)
        await trx.insertInto('items').values({ name: 'b' }).execute()
        await sleep(200)
        await trx.insertInto('items').values({ name: 'b2' }).execute()
        throw new Error('b fails')
      })
    ])
    return { a: a.status, b: b.status }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(res.json(), { a: 'fulfilled', b: 'rejected' })
  t.same(await names(), ['a'], "b's transaction rejected (rolled back): none of its rows may be committed")
})

t.test('drizzle, route transaction: the same', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', { config: { pgPool: { transaction: true } } }, async (req) => {
    const d = drizzle(req.db.pool)
    const [a, b] = await Promise.allSettled([
      d.transaction(async (tx) => {
        await tx.insert(items).values({ name: 'a' })
        await sleep(100)
      }),
      d.transaction(async (tx) => {
        await sleep(20)
        await tx.insert(items).values({ name: 'b' })
        await sleep(200)
        throw new Error('b fails')
      })
    ])
    return { a: a.status, b: b.status }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(res.json(), { a: 'fulfilled', b: 'rejected' })
  t.same(await names(), ['a'])
})

t.test('Kysely: a plain insert beside a failing transaction waits its turn, and stays committed', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => {
    const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
    const [a, b] = await Promise.allSettled([
      (async () => { await sleep(20); await k.insertInto('items').values({ name: 'plain' }).execute() })(),
      k.transaction().execute(async (trx) => {
        await trx.insertInto('items').values({ name: 'tx' }).execute()
        await sleep(100)
        throw new Error('tx fails')
      })
    ])
    return { a: a.status, b: b.status }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(res.json(), { a: 'fulfilled', b: 'rejected' })
  t.same(await names(), ['plain'], 'the plain insert resolved outside any transaction of the caller: it must be committed')
})

t.test('the outer pool used inside its own transaction waits, as on a pool of one; when the request ends the wait is refused and nothing is committed', async (t) => {
  const app = await buildApp(t, db, {}, { connectionTimeout: 300 })
  const outcome: Record<string, unknown> = {}
  let settled!: () => void
  const done = new Promise<void>((resolve) => { settled = resolve })
  app.post('/', async (req) => {
    const d = drizzle(req.db.pool)
    await d.transaction(async (tx) => {
      await tx.insert(items).values({ name: 'in-tx' })
      // The outer db, by mistake: it waits for the transaction that waits for it.
      await d.insert(items).values({ name: 'outer' }).then(() => { outcome.outer = 'ran' }, (e: { cause?: { code?: string }, code?: string }) => { outcome.outer = e.cause?.code ?? e.code; throw e })
    }).catch((e: { code?: string }) => { outcome.transaction = 'rejected' })
    settled()
    return 'late'
  })
  const url = await listen(app)
  const res = await send(`${url}/`, { method: 'POST' }).done
  t.ok(res instanceof Error, 'the client was cut off by connectionTimeout: the request ended')
  await done
  t.same(outcome, { outer: 'FST_PG_REQUEST_ENDED', transaction: 'rejected' })
  t.same(await names(), [], 'nothing committed: neither row')
  await until(() => app.pg.stats().active === 0, 'the connection went back')
})

t.test('fastify.pg.transaction: two Kysely transactions at once on db.pool take turns', async (t) => {
  const app = await buildApp(t, db)
  await app.ready()
  const out = await app.pg.transaction(async (tx) => {
    const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: tx.pool }) })
    const [a, b] = await Promise.allSettled([
      k.transaction().execute(async (trx) => { await trx.insertInto('items').values({ name: 'a' }).execute(); await sleep(100) }),
      k.transaction().execute(async (trx) => { await sleep(20); await trx.insertInto('items').values({ name: 'b' }).execute(); await sleep(200); throw new Error('b fails') })
    ])
    return { a: a.status, b: b.status }
  })
  t.same(out, { a: 'fulfilled', b: 'rejected' })
  t.same(await names(), ['a'], 'fastify.pg.transaction resolved; a committed inside it')
})
