import Fastify, { type FastifyPluginAsync } from 'fastify'
import type { PoolClient, QueryResult } from 'pg'
import { expect, test } from 'tstyche'
import pgPool, {
  PgAcquireTimeoutError,
  pgPool as named,
  type PgIdentity,
  type PgIdentityResolver,
  type PgPoolOptions,
  type PoolStats,
  type RequestDb
} from '../../src/index.js'

const app = Fastify()

test('the plugin registers with pg.PoolConfig fields and the plugin options', () => {
  expect(pgPool).type.toBe(named)
  expect(pgPool).type.toBeAssignableTo<FastifyPluginAsync<PgPoolOptions>>()
  expect(app.register(pgPool, {
    connectionString: 'postgres://localhost/db',
    max: 10,
    idleTimeoutMillis: 10_000,
    ssl: { rejectUnauthorized: true },
    application_name: 'api',
    pingIdleMs: false,
    pingTimeoutMs: 500,
    acquireTimeoutMs: 2000,
    closeTimeoutMs: 10_000
  })).type.not.toRaiseError()
  expect(app.register(pgPool, {
    maxWaiting: 20,
    maxLifetimeMs: 600_000,
    maxLifetimeJitter: 0.2,
    underPressure: { maxEventLoopDelay: 1000, exposeStatusRoute: true }
  })).type.not.toRaiseError()
  expect(app.register(pgPool, { underPressure: false, maxLifetimeMs: false })).type.not.toRaiseError()
  expect(app.register(pgPool, { underPressure: true })).type.toRaiseError()
  expect(app.register(pgPool, { pingIdleMs: 'soon' })).type.toRaiseError()
  expect(app.register(pgPool, { acquireTimeoutMs: '1s' })).type.toRaiseError()
})

test('request.db.query returns typed rows', () => {
  app.get('/', async (req) => {
    expect(req.db).type.toBe<RequestDb>()
    const result = await req.db.query<{ id: number }>('select 1 as id', [1])
    expect(result).type.toBe<QueryResult<{ id: number }>>()
    expect(result.rows[0]?.id).type.toBe<number | undefined>()
    expect(await req.db.query({ text: 'select 1', values: [] })).type.toBe<QueryResult<any>>()
    expect(await req.db.connection()).type.toBe<PoolClient>()
    expect(req.db.query(1)).type.toRaiseError()
    return 'ok'
  })
})

test('route config opts out of shedding; retry is a query option', () => {
  expect(app.get('/live', { config: { pgPool: { shedding: false } } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.get('/live', { config: { pgPool: { shedding: 'no' } } }, async () => 'ok')).type.toRaiseError()
  expect(app.post('/tx', { config: { pgPool: { transaction: true, statementTimeoutMs: 5000 } } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.post('/tx', { config: { pgPool: { transaction: { isolationLevel: 'serializable', readOnly: true } } } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.post('/tx', { config: { pgPool: { transaction: { isolationLevel: 'chaos' } } } }, async () => 'ok')).type.toRaiseError()
  expect(app.register(pgPool, { pgbouncer: true, pooling: false, statementTimeoutMs: 5000 })).type.not.toRaiseError()
  expect(app.register(pgPool, { statementTimeoutMs: '5s' })).type.toRaiseError()
  app.get('/', async (req) => {
    expect(req.db.query({ text: 'select 1', retry: true })).type.toBe<Promise<QueryResult<any>>>()
    return 'ok'
  })
})

test('prepared statements: a plugin option, a route option, a statement option', () => {
  expect(app.register(pgPool, { prepare: false, statementCacheSize: 200 })).type.not.toRaiseError()
  expect(app.register(pgPool, { statementCacheSize: '200' })).type.toRaiseError()
  expect(app.get('/p', { config: { pgPool: { prepare: false } } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.get('/p', { config: { pgPool: { prepare: 'no' } } }, async () => 'ok')).type.toRaiseError()
  app.get('/', async (req) => {
    expect(req.db.query({ text: 'select $1::int', values: [1], prepare: false })).type.toBe<Promise<QueryResult<any>>>()
    expect(app.pg.query({ text: 'select $1::int', values: [1], prepare: false })).type.toBe<Promise<QueryResult<any>>>()
    return 'ok'
  })
})

test('identity: a plugin option and a route option, sync or async; PgIdentity exported', () => {
  expect(app.register(pgPool, { identity: (req, db) => ({ role: 'tenant_user', settings: { 'app.tenant_id': String(req.id), 'app.db': db } }) })).type.not.toRaiseError()
  expect(app.register(pgPool, { identity: async () => ({ settings: { 'app.tenant_id': 1, 'app.admin': false, 'app.big': 1n } }) })).type.not.toRaiseError()
  expect(app.register(pgPool, { identity: () => undefined })).type.not.toRaiseError()
  expect(app.register(pgPool, { identity: { role: 'tenant_user' } })).type.toRaiseError()
  expect(app.register(pgPool, { identity: () => ({ role: 5 }) })).type.toRaiseError()
  expect(app.register(pgPool, { identity: () => ({ settings: { 'app.tenant_id': { id: 1 } } }) })).type.toRaiseError()
  expect(app.get('/i', { config: { pgPool: { identity: false } } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.get('/i', { config: { pgPool: { identity: (req) => req.headers['x-tenant'] === undefined ? undefined : { role: 'tenant_user' } } } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.get('/i', { config: { pgPool: { identity: true } } }, async () => 'ok')).type.toRaiseError()
  const resolver: PgIdentityResolver = () => ({ role: 'r' })
  expect(resolver).type.toBeAssignableTo<(...args: any[]) => PgIdentity | undefined | null | PromiseLike<PgIdentity | undefined | null>>()
})

test('fastify.pg', () => {
  expect(app.pg.healthCheck).type.toBeAssignableTo<(fastify: typeof app) => Promise<Record<string, unknown> | boolean>>()
  expect(app.pg.stats()).type.toBe<PoolStats>()
  expect(app.pg.stats().holdMs.p99).type.toBe<number>()
  expect(app.pg.stats().destroyed.lifetime).type.toBe<number>()
  expect(app.register(pgPool, { leakDetectionMs: 10_000 })).type.not.toRaiseError()
  expect(app.pg.query<{ n: number }>('select 1 as n')).type.toBe<Promise<QueryResult<{ n: number }>>>()
  expect(app.pg.pool.connect()).type.toBe<Promise<PoolClient>>()
})

test('errors carry their code', () => {
  expect(new PgAcquireTimeoutError(100).code).type.toBe<'FST_PG_ACQUIRE_TIMEOUT'>()
  expect(new PgAcquireTimeoutError(100).statusCode).type.toBe<503>()
})
