import Fastify from 'fastify'
import pg from 'pg'
import { drizzle } from 'drizzle-orm/node-postgres'
import { Kysely, PostgresDialect, type Generated } from 'kysely'
import { PrismaPg } from '@prisma/adapter-pg'
import { expect, test } from 'tstyche'
import pgPool, { type PgPool, type PgPoolLike, type RequestDb } from '../../src/index.js'

const app = Fastify()
app.register(pgPool, { connectionString: 'postgres://localhost/db' })

interface Database { items: { id: Generated<number>, name: string } }

test('fastify.pg.pool and request.db.pool are pg.Pools to the type checker', () => {
  expect(app.pg.pool).type.toBeAssignableTo<pg.Pool>()
  expect<PgPool>().type.toBeAssignableTo<PgPoolLike>()
  expect<RequestDb['pool']>().type.toBeAssignableTo<pg.Pool>()
  expect(app.pg.pool.on('release', (err, client) => { expect(err).type.toBe<Error>(); expect(client).type.toBe<pg.PoolClient>() })).type.not.toRaiseError()
  expect(app.pg.pool.end()).type.toBe<Promise<void>>()
  expect(app.pg.pool.options.max).type.toBe<number>()
})

test('the libraries that take a pool take them without a cast', () => {
  expect(drizzle(app.pg.pool)).type.not.toRaiseError()
  expect(new Kysely<Database>({ dialect: new PostgresDialect({ pool: app.pg.pool }) })).type.not.toRaiseError()
  expect(new PrismaPg(app.pg.pool)).type.not.toRaiseError()
  app.get('/', async (req) => {
    expect(drizzle(req.db.pool)).type.not.toRaiseError()
    expect(drizzle({ client: req.db.pool })).type.not.toRaiseError()
    expect(new Kysely<Database>({ dialect: new PostgresDialect({ pool: req.db.pool }) })).type.not.toRaiseError()
    expect(new PrismaPg(req.db.pool)).type.not.toRaiseError()
    await req.db.transaction(async (tx) => {
      expect(drizzle(tx.pool)).type.not.toRaiseError()
    })
    return 'ok'
  })
})

test('fastify.pg.transaction and fastify.pg.connect', () => {
  expect(app.pg.transaction(async (db) => (await db.query<{ n: number }>('select 1 as n')).rows[0]?.n)).type.toBe<Promise<number | undefined>>()
  expect(app.pg.transaction(async () => 1, { isolationLevel: 'serializable' })).type.toBe<Promise<number>>()
  expect(app.pg.transaction(async () => 1, { isolationLevel: 'chaos' })).type.toRaiseError()
  expect(app.pg.connect()).type.toBe<Promise<pg.PoolClient>>()
  expect(app.pg.connect((err, _client, done) => { done(err ?? undefined) })).type.toBe<void>()
})

test('callback shapes of pg.Pool are typed; the retry option is kept', () => {
  expect(app.pg.pool.query('select 1', [], (err, res) => { expect(err).type.toBe<Error>(); expect(res.rows).type.toBe<any[]>() })).type.toBe<void>()
  expect(app.pg.pool.query({ text: 'select 1', retry: true })).type.toBe<Promise<pg.QueryResult<any>>>()
})
