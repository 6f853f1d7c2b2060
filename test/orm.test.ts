/**
 * The ORMs users bring, on `request.db.pool` (the request's connection as a pg.Pool of one), with
 * every guarantee of `request.db`: checked out on first use, the route's statement timeout, the
 * route's transaction with the ORM's own transactions nested as savepoints, statements after the
 * end refused, the connection back when the request ends. And on `fastify.pg.pool`, outside requests.
 * Real libraries (kysely, drizzle-orm, @prisma/adapter-pg driven as Prisma's engine drives it:
 * `prisma generate` cannot run here), a real server, no casts.
 */
import t from 'tap'
import { Kysely, PostgresDialect, sql as ksql, type Generated } from 'kysely'
import { drizzle } from 'drizzle-orm/node-postgres'
import { migrate } from 'drizzle-orm/node-postgres/migrator'
import { sql as dsql } from 'drizzle-orm'
import { pgTable, serial, text } from 'drizzle-orm/pg-core'
import { PrismaPg } from '@prisma/adapter-pg'
import Cursor from 'pg-cursor'
import type { PgPoolLike } from '../src/index.js'
import { buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { listen, send, until } from './helpers/util.js'
import { sleeping } from './helpers/abort-cancel.js'

const db = await setupDatabase(t)
await db.admin('create table items (id serial primary key, name text not null)')

interface Schema { items: { id: Generated<number>, name: string } }
const items = pgTable('items', { id: serial('id').primaryKey(), name: text('name').notNull() })

const names = async (): Promise<string[]> => (await db.admin<{ name: string }>('select name from items order by id')).rows.map((r) => r.name)
t.beforeEach(async () => { await db.admin('truncate items') })

t.test('Kysely on request.db.pool', async (t) => {
  t.test('checked out on the first statement only, returned when the request ends', async (t) => {
    const app = await buildApp(t, db)
    app.get('/none', async (req) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
      return { made: k !== undefined }
    })
    app.get('/one', async (req) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
      await k.insertInto('items').values({ name: 'a' }).execute()
      const rows = await k.selectFrom('items').select('name').execute()
      // (Its destroy() ends nothing: the request returns the connection.)
      await k.destroy()
      return rows
    })
    await app.inject('/none')
    t.equal(app.pg.stats().acquires, 0, 'a request that never queries takes no connection')
    t.same((await app.inject('/one')).json(), [{ name: 'a' }])
    t.equal(app.pg.stats().acquires, 1, 'one checkout for the whole request')
    await until(() => app.pg.stats().active === 0, 'the connection is back')
  })

  t.test("the route's statement timeout applies to its statements", async (t) => {
    const app = await buildApp(t, db)
    app.get('/', { config: { pgPool: { statementTimeoutMs: 100 } } }, async (req) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
      const started = Date.now()
      const error = await ksql`select pg_sleep(0.6)`.execute(k).then(() => undefined, (e: { code?: string }) => e.code)
      return { error, ms: Date.now() - started }
    })
    const { error, ms } = (await app.inject('/')).json()
    t.equal(error, '57014', 'cancelled by the server')
    t.ok(ms < 550, `stopped by the 100 ms timeout (${ms} ms), not after the 600 ms sleep`)
  })

  t.test("its transactions nest in the route's as savepoints: an inner failure rolls back only itself", async (t) => {
    const app = await buildApp(t, db)
    app.post('/', { config: { pgPool: { transaction: true } } }, async (req) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
      await k.insertInto('items').values({ name: 'route' }).execute()
      await k.transaction().execute(async (trx) => {
        await trx.insertInto('items').values({ name: 'inner' }).execute()
        throw new Error('inner fails')
      }).catch(() => {})
      await k.transaction().execute(async (trx) => { await trx.insertInto('items').values({ name: 'kept' }).execute() })
      const { rows } = await ksql<{ n: number }>`select count(*)::int as n from pg_stat_activity where pid = pg_backend_pid() and state = 'active' and backend_xid is not null`.execute(k)
      return { inRouteTx: rows[0]?.n }
    })
    const res = await app.inject({ method: 'POST', url: '/' })
    t.equal(res.statusCode, 200, res.body)
    t.same(await names(), ['route', 'kept'], 'the route committed its own and the kept inner work, not the failed inner one')
  })

  t.test('a route that fails rolls back what Kysely committed inside it', async (t) => {
    const app = await buildApp(t, db)
    app.post('/', { config: { pgPool: { transaction: true } } }, async (req, reply) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
      await k.transaction().execute(async (trx) => { await trx.insertInto('items').values({ name: 'inner' }).execute() })
      return await reply.code(409).send({ conflict: true })
    })
    t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 409)
    t.same(await names(), [], "Kysely's COMMIT was a RELEASE SAVEPOINT: the route's rollback undid it")
  })

  t.test('a statement after the request ended is refused, not run on a connection someone else holds', async (t) => {
    const app = await buildApp(t, db)
    let late: Promise<unknown> | undefined
    app.get('/', async (req, reply) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
      await k.selectFrom('items').selectAll().execute()
      reply.raw.once('close', () => { late = k.insertInto('items').values({ name: 'late' }).execute() })
      return 'ok'
    })
    await app.inject('/')
    await until(() => late !== undefined, 'the late statement was issued')
    await t.rejects(late as Promise<unknown>, { code: 'FST_PG_REQUEST_ENDED' })
    t.same(await names(), [])
  })

  t.test('the client aborts mid-transaction: its statement is cancelled, the transaction rolled back, the connection returned', async (t) => {
    const app = await buildApp(t, db, { max: 1 })
    const failures: unknown[] = []
    app.post('/', async (req) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
      await k.transaction().execute(async (trx) => {
        await trx.insertInto('items').values({ name: 'aborted' }).execute()
        await ksql`select pg_sleep(10)`.execute(trx).catch((error: unknown) => { failures.push(error); throw error })
      })
      return 'never'
    })
    app.get('/n', async (req) => (await req.db.query('select count(*)::int as n from items')).rows[0])
    const url = await listen(app)
    const sent = send(`${url}/`, { method: 'POST' })
    await until(async () => (await sleeping(db)).length === 1, 'the statement runs on the server')
    sent.req.destroy()
    await until(async () => (await sleeping(db)).length === 0, 'it stops on the server', 2000)
    const next = await send(`${url}/n`).done
    t.same(next instanceof Error ? next.message : JSON.parse(next.body), { n: 0 }, 'the next request (max: 1) is served; the insert was rolled back')
    t.match(app.pg.stats(), { cancels: 1, cancelsSettled: 1, destroyed: { stuck: 0 } })
    await until(() => failures.length > 0, 'the handler heard it')
    t.match(failures, [{ code: 'FST_PG_CANCELLED' }])
  })

  t.test('streams through a cursor; one left unread is closed when the request ends', async (t) => {
    const app = await buildApp(t, db, { max: 1 })
    await db.admin("insert into items (name) select 'row ' || i from generate_series(1, 50) i")
    app.get('/all', async (req) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool, cursor: Cursor }) })
      let n = 0
      for await (const row of k.selectFrom('items').select('name').stream(7)) if (row.name.startsWith('row ')) n++
      return { n }
    })
    app.get('/first', async (req) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool, cursor: Cursor }) })
      const rows = k.selectFrom('items').select('name').stream(5)[Symbol.asyncIterator]()
      return (await rows.next()).value
    })
    t.same((await app.inject('/all')).json(), { n: 50 })
    t.same((await app.inject('/first')).json(), { name: 'row 1' })
    t.same((await app.inject('/all')).json(), { n: 50 }, 'the connection (max: 1) came back usable after the unread stream')
  })

  t.test('session state it leaves is reset before the next request', async (t) => {
    const app = await buildApp(t, db, { max: 1 })
    app.get('/set', async (req) => {
      const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: req.db.pool }) })
      await ksql`set search_path to nowhere`.execute(k)
      return 'ok'
    })
    app.get('/get', async (req) => (await req.db.query('show search_path')).rows[0])
    await app.inject('/set')
    t.same((await app.inject('/get')).json(), { search_path: '"$user", public' })
  })
})

t.test('drizzle on request.db.pool', async (t) => {
  t.test('queries, and its transactions nest in the route transaction as savepoints', async (t) => {
    const app = await buildApp(t, db)
    app.post('/', { config: { pgPool: { transaction: true } } }, async (req) => {
      const d = drizzle(req.db.pool)
      await d.insert(items).values({ name: 'route' })
      await d.transaction(async (tx) => {
        await tx.insert(items).values({ name: 'kept' })
        await tx.transaction(async (inner) => {
          await inner.insert(items).values({ name: 'inner' })
          inner.rollback()
        }).catch(() => {})
      })
      await d.transaction(async (tx) => {
        await tx.insert(items).values({ name: 'failed' })
        throw new Error('fails')
      }).catch(() => {})
      return await d.select({ name: items.name }).from(items)
    })
    const res = await app.inject({ method: 'POST', url: '/' })
    t.same(res.json(), [{ name: 'route' }, { name: 'kept' }], 'inside the request, what it sees')
    t.same(await names(), ['route', 'kept'], 'committed with the route')
  })

  t.test("on a route without a transaction its transaction is its own; the route's timeout applies", async (t) => {
    const app = await buildApp(t, db)
    app.get('/', { config: { pgPool: { statementTimeoutMs: 100 } } }, async (req) => {
      const d = drizzle({ client: req.db.pool })
      await d.transaction(async (tx) => { await tx.insert(items).values({ name: 'own' }) })
      const error = await d.execute(dsql`select pg_sleep(0.6)`).then(() => undefined, (e: { cause?: { code?: string }, code?: string }) => e.cause?.code ?? e.code)
      return { error }
    })
    t.same((await app.inject('/')).json(), { error: '57014' })
    t.same(await names(), ['own'])
    await until(() => app.pg.stats().active === 0, 'returned')
  })
})

const text1 = { scalarType: 'string', arity: 'scalar' } as const

t.test("Prisma's adapter on request.db.pool", async (t) => {
  t.test("its transactions nest in the route's as savepoints", async (t) => {
    const app = await buildApp(t, db)
    app.post('/', { config: { pgPool: { transaction: true } } }, async (req) => {
      const adapter = await new PrismaPg(req.db.pool).connect()
      await adapter.executeRaw({ sql: 'insert into items (name) values ($1)', args: ['route'], argTypes: [text1] })
      // As Prisma's engine runs an interactive transaction: BEGIN on a connect()ed client, its
      // own COMMIT or ROLLBACK as statements, then commit()/rollback() to let the client go.
      const kept = await adapter.startTransaction()
      await kept.executeRaw({ sql: 'insert into items (name) values ($1)', args: ['kept'], argTypes: [text1] })
      await kept.executeRaw({ sql: 'COMMIT', args: [], argTypes: [] })
      await kept.commit()
      const undone = await adapter.startTransaction()
      await undone.executeRaw({ sql: 'insert into items (name) values ($1)', args: ['undone'], argTypes: [text1] })
      await undone.executeRaw({ sql: 'ROLLBACK', args: [], argTypes: [] })
      await undone.rollback()
      await adapter.dispose()
      return 'ok'
    })
    const res = await app.inject({ method: 'POST', url: '/' })
    t.equal(res.statusCode, 200, res.body)
    t.same(await names(), ['route', 'kept'])
  })

  t.test("its queries carry the route's timeout", async (t) => {
    const app = await buildApp(t, db)
    app.get('/', { config: { pgPool: { statementTimeoutMs: 100 } } }, async (req) => {
      const adapter = await new PrismaPg(req.db.pool).connect()
      const started = Date.now()
      const code = await adapter.queryRaw({ sql: 'select pg_sleep(0.6)', args: [], argTypes: [] })
        .then(() => 'ran', (e: { cause?: { originalCode?: string } }) => e.cause?.originalCode)
      return { code, ms: Date.now() - started }
    })
    const { code, ms } = (await app.inject('/')).json()
    t.equal(code, '57014')
    t.ok(ms < 550, `${ms} ms`)
  })

  t.test('queries and a transaction of its own on a route without one', async (t) => {
    const app = await buildApp(t, db)
    app.post('/', async (req) => {
      const adapter = await new PrismaPg(req.db.pool).connect()
      const tx = await adapter.startTransaction('SERIALIZABLE')
      await tx.executeRaw({ sql: 'insert into items (name) values ($1)', args: ['own'], argTypes: [text1] })
      const { rows } = await tx.queryRaw({ sql: 'select current_setting($1) as level', args: ['transaction_isolation'], argTypes: [text1] })
      await tx.executeRaw({ sql: 'COMMIT', args: [], argTypes: [] })
      await tx.commit()
      return { level: rows[0]?.[0] }
    })
    t.same((await app.inject({ method: 'POST', url: '/' })).json(), { level: 'serializable' })
    t.same(await names(), ['own'])
    await until(() => app.pg.stats().active === 0, 'returned')
  })
})

t.test('on fastify.pg.pool, outside requests', async (t) => {
  t.test("Prisma's adapter takes it as a pool (not as a config): dispose() leaves it open", async (t) => {
    const app = await buildApp(t, db)
    const factory = new PrismaPg(app.pg.pool)
    const adapter = await factory.connect()
    t.equal(adapter.underlyingDriver(), app.pg.pool, 'the pool itself, not a pool of its own built from it')
    const tx = await adapter.startTransaction()
    await tx.executeRaw({ sql: 'insert into items (name) values ($1)', args: ['job'], argTypes: [text1] })
    await tx.executeRaw({ sql: 'COMMIT', args: [], argTypes: [] })
    await tx.commit()
    const { rows } = await adapter.queryRaw({ sql: 'select name from items', args: [], argTypes: [] })
    t.same(rows, [['job']])
    await adapter.dispose()
    t.equal(app.pg.pool.ending, false)
    t.equal(app.pg.stats().active, 0)
  })

  t.test('Kysely: one checkout per statement or transaction; destroy() ends the pool (call it at shutdown)', async (t) => {
    const app = await buildApp(t, db)
    const k = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: app.pg.pool }) })
    await k.transaction().execute(async (trx) => { await trx.insertInto('items').values({ name: 'job' }).execute() })
    t.same(await k.selectFrom('items').select('name').execute(), [{ name: 'job' }])
    t.equal(app.pg.stats().active, 0, 'nothing left checked out')
    await k.destroy()
    t.equal(app.pg.pool.ended, true)
  })

  t.test("drizzle's migrator runs its migrations once, in a transaction", async (t) => {
    const app = await buildApp(t, db)
    const migrationsFolder = new URL('./fixtures/drizzle', import.meta.url).pathname
    await migrate(drizzle(app.pg.pool), { migrationsFolder })
    await migrate(drizzle(app.pg.pool), { migrationsFolder })
    t.same((await app.pg.query('select name from widgets')).rows, [{ name: 'first' }], 'applied once')
    t.equal(app.pg.stats().active, 0)
  })

  t.test('drizzle: queries and transactions', async (t) => {
    const app = await buildApp(t, db)
    const d = drizzle(app.pg.pool)
    await d.transaction(async (tx) => { await tx.insert(items).values({ name: 'job' }) })
    t.same(await d.select({ name: items.name }).from(items), [{ name: 'job' }])
    t.equal(app.pg.stats().active, 0)
  })
})

t.test('request.db.pool: one holder at a time, as a pool of one', async (t) => {
  const app = await buildApp(t, db)
  let kept: PgPoolLike | undefined
  app.get('/', async (req) => {
    const pool = req.db.pool
    t.equal(pool, req.db.pool, 'one view per db')
    const first = await pool.connect()
    let secondGot = false
    const second = pool.connect().then((c) => { secondGot = true; return c })
    await new Promise((resolve) => setTimeout(resolve, 20))
    const waiting = pool.waitingCount
    const beforeRelease = secondGot
    first.release()
    const client = await second
    t.throws(() => first.release(), { code: 'FST_PG_DOUBLE_RELEASE' })
    await t.rejects(first.query('select 1'), { code: 'FST_PG_RELEASED' })
    const calledBack = await new Promise((resolve) => first.query('select 1', (err: Error) => resolve(err)))
    t.throws(() => first.query(new Cursor('select 1')), { code: 'FST_PG_RELEASED' })
    const n = (await client.query('select 1 as n')).rows[0].n
    client.release(new Error('the caller found it broken'))
    kept = pool
    return { waiting, beforeRelease, n, calledBack: (calledBack as { code?: string }).code, counts: [pool.totalCount, pool.idleCount, pool.expiredCount] }
  })
  t.same((await app.inject('/')).json(), { waiting: 1, beforeRelease: false, n: 1, calledBack: 'FST_PG_RELEASED', counts: [1, 0, 0] })
  await until(() => app.pg.stats().total === 0, 'release(err) had the connection destroyed when the request ended')
  await t.rejects((kept as PgPoolLike).connect(), { code: 'FST_PG_REQUEST_ENDED' }, 'no turn after the end')
})

t.test('a pool view first asked for after the request ended gives no turn', async (t) => {
  const app = await buildApp(t, db)
  let late: Promise<unknown> | undefined
  app.get('/', async (req, reply) => {
    reply.raw.once('close', () => { late = req.db.pool.query('select 1') })
    return 'ok'
  })
  await app.inject('/')
  await until(() => late !== undefined, 'asked after the end')
  await t.rejects(late as Promise<unknown>, { code: 'FST_PG_REQUEST_ENDED' })
  t.equal(app.pg.stats().acquires, 0)
})

t.test('request.db.pool: a checkout that fails ends the turn (the next caller is not left waiting)', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    await app.pg.pool.end()
    const codes = await Promise.all([req.db.pool.connect(), req.db.pool.connect()].map(async (p) => await p.then(() => 'connected', (e: { code?: string }) => e.code)))
    return { codes }
  })
  t.same((await app.inject('/')).json(), { codes: ['FST_PG_POOL_CLOSED', 'FST_PG_POOL_CLOSED'] })
})
