/**
 * Overhead: a route running `select 1`, through
 *   (a) pg's Pool, `pool.query()` (the baseline)
 *   (b) pg's Pool, `connect()` / `release()` around the query
 *   (c) @fastify/postgres, `fastify.pg.query()`
 *   (d) fastify-pg-pool, `request.db.query()` with its defaults (shedding on)
 *   (d') (d) from another build, when BENCH_BASELINE names one (a change's before and after)
 *   (e) the same with leak detection on, to show what the stack per checkout costs
 * and a route without a database as the ceiling. Pools of 10, 20 autocannon connections.
 */
import fastifyPostgres from '@fastify/postgres'
import Fastify, { type FastifyInstance } from 'fastify'
import pg from 'pg'
import { baselinePgPool, compare, fixed, listen, table, DURATION, ROUNDS, pgPool } from './lib.js'

const MAX = 10
const CONNECTIONS = 20
const SQL = 'select 1 as x'

export async function overhead (connectionString: string): Promise<string> {
  const apps: FastifyInstance[] = []
  const contenders: Array<{ name: string, url: string }> = []
  const add = async (name: string, build: (app: FastifyInstance) => Promise<void>): Promise<void> => {
    const app = Fastify()
    await build(app)
    apps.push(app)
    contenders.push({ name, url: await listen(app) })
  }
  const pools: pg.Pool[] = []
  const pool = (): pg.Pool => {
    const p = new pg.Pool({ connectionString, max: MAX })
    p.on('error', () => {})
    pools.push(p)
    return p
  }

  await add('no database (ceiling)', async (app) => { app.get('/', async () => ({ x: 1 })) })
  await add('(a) pg Pool, pool.query()', async (app) => {
    const p = pool()
    app.get('/', async () => (await p.query(SQL)).rows[0])
  })
  await add('(b) pg Pool, connect() + release()', async (app) => {
    const p = pool()
    app.get('/', async () => {
      const client = await p.connect()
      try {
        return (await client.query(SQL)).rows[0]
      } finally {
        client.release()
      }
    })
  })
  await add('(c) @fastify/postgres, fastify.pg.query()', async (app) => {
    await app.register(fastifyPostgres, { connectionString, max: MAX })
    ;(app.pg.pool as unknown as pg.Pool).on('error', () => {})
    app.get('/', async () => (await app.pg.query(SQL)).rows[0])
  })
  await add('(d) fastify-pg-pool, request.db.query()', async (app) => {
    await app.register(pgPool, { connectionString, max: MAX })
    app.get('/', async (req) => (await req.db.query(SQL)).rows[0])
  })
  const other = baselinePgPool
  if (other !== undefined) {
    await add("(d') as (d), the build in BENCH_BASELINE", async (app) => {
      await app.register(other, { connectionString, max: MAX })
      app.get('/', async (req) => (await req.db.query(SQL)).rows[0])
    })
  }
  await add('(e) as (d), with leakDetectionMs on (a stack per checkout)', async (app) => {
    await app.register(pgPool, { connectionString, max: MAX, leakDetectionMs: 10_000 })
    app.get('/', async (req) => (await req.db.query(SQL)).rows[0])
  })

  const results = await compare(contenders, CONNECTIONS)
  for (const app of apps) await app.close()
  for (const p of pools) await p.end()

  const base = results.get('(a) pg Pool, pool.query()')!
  const rows = contenders.map(({ name }) => {
    const r = results.get(name)!
    return [name, fixed(r.rps), fixed(r.rps / base.rps, 3), fixed(r.cpuUs, 1), fixed(r.cpuUs - base.cpuUs, 1), r.p50, r.p99]
  })
  return `### Overhead: \`select 1\` per request (pool max ${MAX}, ${CONNECTIONS} connections, median of ${ROUNDS} interleaved ${DURATION} s rounds)\n\n` +
    table(['contender', 'req/s', 'ratio to (a)', 'server CPU per request (µs)', 'vs (a) (µs)', 'p50 (ms)', 'p99 (ms)'], ['---', '---:', '---:', '---:', '---:', '---:', '---:'], rows)
}
