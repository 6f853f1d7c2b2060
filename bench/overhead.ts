/**
 * Overhead of the request path, two tables:
 *
 * `select 1` per request, through
 *   (a) pg's Pool, `pool.query()` (the baseline)
 *   (b) pg's Pool, `connect()` / `release()` around the query
 *   (c) @fastify/postgres, `fastify.pg.query()`
 *   (d) fastify-pg-pool, `request.db.query()` with its defaults (shedding on)
 *   (d') (d) from another build, when BENCH_BASELINE names one (a change's before and after)
 *   (e) the same with leak detection on, to show what the stack per checkout costs
 * and a route without a database as the ceiling.
 *
 * Three statements per request (`select $1::int` three times, one after the other), through
 *   (a) pg's Pool, three `pool.query()` (three checkouts)
 *   (b) pg's Pool, `connect()`, three queries, `release()`
 *   (c) @fastify/postgres, three `fastify.pg.query()`
 *   (d) fastify-pg-pool, three `request.db.query()` (one checkout)
 *
 * Pools of 10, 20 autocannon connections. Targets: server CPU per `select 1` request of (d) ≤
 * (c)'s + 2 µs; on three statements (d) ≥ 1.0 × (b) and (c) in req/s.
 */
import fastifyPostgres from '@fastify/postgres'
import type { FastifyInstance } from 'fastify'
import type pg from 'pg'
import { Arena, baselinePgPool, fixed, pairedMedian, table, DURATION, ROUNDS, pgPool, type Measured } from './lib.js'

const MAX = 10
const CONNECTIONS = 20
const CPU_TARGET_US = 2

const HEAD = ['contender', 'req/s', 'ratio to (a)', 'server CPU per request (µs)', 'vs (a) (µs)', 'p50 (ms)', 'p99 (ms)']
const ALIGN = ['---', '---:', '---:', '---:', '---:', '---:', '---:']

function rows (arena: Arena, results: Map<string, Measured>, base: Measured): Array<Array<string | number>> {
  return arena.contenders.map(({ name }) => {
    const r = results.get(name)!
    return [name, fixed(r.rps), fixed(r.rps / base.rps, 3), fixed(r.cpuUs, 1), fixed(r.cpuUs - base.cpuUs, 1), r.p50, r.p99]
  })
}

async function withFastifyPostgres (app: FastifyInstance, connectionString: string): Promise<void> {
  await app.register(fastifyPostgres, { connectionString, max: MAX })
  ;(app.pg.pool as unknown as pg.Pool).on('error', () => {})
}

async function selectOne (connectionString: string): Promise<string> {
  const SQL = 'select 1 as x'
  const arena = new Arena(connectionString)
  await arena.add('no database (ceiling)', (app) => { app.get('/', async () => ({ x: 1 })) })
  const a = arena.pool(MAX)
  await arena.add('(a) pg Pool, pool.query()', (app) => { app.get('/', async () => (await a.query(SQL)).rows[0]) })
  const b = arena.pool(MAX)
  await arena.add('(b) pg Pool, connect() + release()', (app) => {
    app.get('/', async () => {
      const client = await b.connect()
      try {
        return (await client.query(SQL)).rows[0]
      } finally {
        client.release()
      }
    })
  })
  await arena.add('(c) @fastify/postgres, fastify.pg.query()', async (app) => {
    await withFastifyPostgres(app, connectionString)
    app.get('/', async () => (await app.pg.query(SQL)).rows[0])
  })
  await arena.add('(d) fastify-pg-pool, request.db.query()', async (app) => {
    await app.register(pgPool, { connectionString, max: MAX })
    app.get('/', async (req) => (await req.db.query(SQL)).rows[0])
  })
  const other = baselinePgPool
  if (other !== undefined) {
    await arena.add("(d') as (d), the build in BENCH_BASELINE", async (app) => {
      await app.register(other, { connectionString, max: MAX })
      app.get('/', async (req) => (await req.db.query(SQL)).rows[0])
    })
  }
  await arena.add('(e) as (d), with leakDetectionMs on (a stack per checkout)', async (app) => {
    await app.register(pgPool, { connectionString, max: MAX, leakDetectionMs: 10_000 })
    app.get('/', async (req) => (await req.db.query(SQL)).rows[0])
  })
  const results = await arena.run(CONNECTIONS)
  const of = (prefix: string): Measured & { rounds: Measured[] } => results.get(arena.contenders.find(({ name }) => name.startsWith(prefix))!.name)!
  const extra = pairedMedian(of('(d)'), of('(c)'), (m) => m.cpuUs)
  const control = pairedMedian(of('(c)'), of('(a)'), (m) => m.cpuUs)
  return '#### `select 1` per request\n\n' + table(HEAD, ALIGN, rows(arena, results, results.get('(a) pg Pool, pool.query()')!)) +
    `\n\n**Verdict:** server CPU per request, (d) − (c), median of the ${ROUNDS} rounds' differences: ${fixed(extra, 1)} µs (target ≤ ${CPU_TARGET_US} µs: ${extra <= CPU_TARGET_US ? 'met' : 'not met'}). ` +
    `For the noise: (c) − (a), the same pg-pool call behind another plugin, measured ${fixed(control, 1)} µs.`
}

async function threeStatements (connectionString: string): Promise<string> {
  const SQL = 'select $1::int as x'
  const arena = new Arena(connectionString)
  const a = arena.pool(MAX)
  await arena.add('(a) pg Pool, three pool.query()', (app) => {
    app.get('/', async () => [(await a.query(SQL, [1])).rows[0], (await a.query(SQL, [2])).rows[0], (await a.query(SQL, [3])).rows[0]])
  })
  const b = arena.pool(MAX)
  await arena.add('(b) pg Pool, connect(), three queries, release()', (app) => {
    app.get('/', async () => {
      const client = await b.connect()
      try {
        return [(await client.query(SQL, [1])).rows[0], (await client.query(SQL, [2])).rows[0], (await client.query(SQL, [3])).rows[0]]
      } finally {
        client.release()
      }
    })
  })
  await arena.add('(c) @fastify/postgres, three fastify.pg.query()', async (app) => {
    await withFastifyPostgres(app, connectionString)
    app.get('/', async () => [(await app.pg.query(SQL, [1])).rows[0], (await app.pg.query(SQL, [2])).rows[0], (await app.pg.query(SQL, [3])).rows[0]])
  })
  await arena.add('(d) fastify-pg-pool, three request.db.query()', async (app) => {
    await app.register(pgPool, { connectionString, max: MAX })
    app.get('/', async (req) => [(await req.db.query(SQL, [1])).rows[0], (await req.db.query(SQL, [2])).rows[0], (await req.db.query(SQL, [3])).rows[0]])
  })
  const results = await arena.run(CONNECTIONS)
  const rps = (prefix: string): number => results.get(arena.contenders.find(({ name }) => name.startsWith(prefix))!.name)!.rps
  const vsB = rps('(d)') / rps('(b)')
  const vsC = rps('(d)') / rps('(c)')
  return '#### Three statements per request\n\n' + table(HEAD, ALIGN, rows(arena, results, results.get(arena.contenders[0]!.name)!)) +
    `\n\n**Verdict:** (d) / (b) ${fixed(vsB, 3)}, (d) / (c) ${fixed(vsC, 3)} (target ≥ 1.0 against both: ${vsB >= 1 && vsC >= 1 ? 'met' : 'not met'}).`
}

export async function overhead (connectionString: string): Promise<string> {
  return `### Overhead of the request path (pool max ${MAX}, ${CONNECTIONS} connections, median of ${ROUNDS} interleaved ${DURATION} s rounds)\n\n` +
    await selectOne(connectionString) + '\n\n' + await threeStatements(connectionString)
}
