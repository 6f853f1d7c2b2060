/**
 * Code written for @fastify/postgres, moved over: `fastify.pg.connect()`, a transaction outside
 * a request (`fastify.pg.transaction`, their `transact`), their route option refused with the way
 * to say it here, and a second registration refused with a message that says what to do.
 */
import t from 'tap'
import Fastify from 'fastify'
import fastifyPostgres from '@fastify/postgres'
import { Kysely, PostgresDialect, type Generated } from 'kysely'
import pgPool from '../src/index.js'
import { buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table jobs (id serial primary key, name text not null)')
const names = async (): Promise<string[]> => (await db.admin<{ name: string }>('select name from jobs order by id')).rows.map((r) => r.name)
t.beforeEach(async () => { await db.admin('truncate jobs') })

t.test('fastify.pg.transaction(fn): COMMIT when fn resolves, with its value; ROLLBACK when it throws', async (t) => {
  const app = await buildApp(t, db)
  const value = await app.pg.transaction(async (tx) => {
    await tx.query("insert into jobs (name) values ('a')")
    return (await tx.query<{ n: number }>('select count(*)::int as n from jobs')).rows[0]?.n
  })
  t.equal(value, 1)
  await t.rejects(app.pg.transaction(async (tx) => {
    await tx.query("insert into jobs (name) values ('b')")
    throw new Error('job failed')
  }), { message: 'job failed' })
  t.same(await names(), ['a'])
  t.equal(app.pg.stats().active, 0, 'the connection went back each time')
})

t.test('nested transaction() and an ORM on db.pool make savepoints; options begin it', async (t) => {
  const app = await buildApp(t, db)
  const level = await app.pg.transaction(async (tx) => {
    await tx.query("insert into jobs (name) values ('outer')")
    await tx.transaction(async (inner) => {
      await inner.query("insert into jobs (name) values ('inner')")
      throw new Error('inner fails')
    }).catch(() => {})
    const k = new Kysely<{ jobs: { id: Generated<number>, name: string } }>({ dialect: new PostgresDialect({ pool: tx.pool }) })
    await k.transaction().execute(async (trx) => { await trx.insertInto('jobs').values({ name: 'kysely' }).execute() })
    return (await tx.query('show transaction_isolation')).rows[0].transaction_isolation
  }, { isolationLevel: 'serializable' })
  t.equal(level, 'serializable')
  t.same(await names(), ['outer', 'kysely'])
})

t.test('a db kept past the end of its transaction is refused: it would run outside it, on a connection someone else may hold', async (t) => {
  const app = await buildApp(t, db)
  let kept: { query: (text: string) => Promise<unknown> } | undefined
  await app.pg.transaction(async (tx) => { kept = tx })
  await t.rejects(kept?.query("insert into jobs (name) values ('late')") as Promise<unknown>, { code: 'FST_PG_REQUEST_ENDED' })
  t.same(await names(), [])
  t.equal(app.pg.stats().active, 0)
})

t.test('a statement fired and forgotten inside it still runs before it commits', async (t) => {
  const app = await buildApp(t, db)
  await app.pg.transaction(async (tx) => {
    tx.query("insert into jobs (name) values ('forgotten')").catch(() => {})
  })
  t.same(await names(), ['forgotten'])
  await until(() => app.pg.stats().active === 0, 'returned')
})

t.test('fastify.pg.connect(): promise and callback, as @fastify/postgres had it', async (t) => {
  const app = await buildApp(t, db)
  const client = await app.pg.connect()
  t.equal((await client.query('select 1 as n')).rows[0].n, 1)
  client.release()
  const n = await new Promise((resolve, reject) => app.pg.connect((err, c, done) => {
    if (err !== undefined || c === undefined) return reject(err)
    c.query('select 2 as n').then((res) => { done(); resolve(res.rows[0].n) }, reject)
  }))
  t.equal(n, 2)
  await until(() => app.pg.stats().active === 0, 'both returned')
})

t.test("@fastify/postgres's route option is refused when the route is added, naming ours", async (t) => {
  const app = await buildApp(t, db)
  t.throws(
    () => app.post('/', { pg: { transact: true } } as never, async () => 'x'),
    { code: 'FST_PG_INVALID_OPTION', message: /@fastify\/postgres.*config: \{ pgPool: \{ transaction: true \} \}.*POST \// }
  )
})

t.test('registered twice: FST_PG_ALREADY_REGISTERED, not a complaint about under-pressure', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pgPool, { connectionString: db.url })
  app.register(pgPool, { connectionString: db.url })
  await t.rejects(async () => { await app.ready() }, { code: 'FST_PG_ALREADY_REGISTERED', message: /without a `name`.*Give each further database a `name`/ })
})

t.test('registered after @fastify/postgres: the same clear refusal', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyPostgres, { connectionString: db.url })
  app.register(pgPool, { connectionString: db.url })
  await t.rejects(async () => { await app.ready() }, { code: 'FST_PG_ALREADY_REGISTERED', message: /@fastify\/postgres/ })
})
