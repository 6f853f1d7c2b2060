/**
 * Round trips: what sending statements without waiting for each answer pays (pg 8.23's client
 * `pipeline` mode writes each statement at once, every one with its own Sync; the plugin writes a
 * route transaction's BEGIN in one batch with its first statement).
 *
 * A transactional route with two statements (`select $1::int`, twice):
 *   (a) pg Pool: BEGIN, s1, s2, COMMIT, each awaited (4 round trips)
 *   (b) pg Pool, pipelined client: BEGIN and s1 together, then s2, then COMMIT (3)
 *   (c) pg Pool, pipelined client: all four written at once (1; the upper bound)
 *   (d) fastify-pg-pool, `config.pgPool.transaction: true`, s1 and s2 (BEGIN rides with s1: 3)
 *   (e) @fastify/postgres, `fastify.pg.transact()`, s1 and s2
 * Two statements at once outside a transaction (`Promise.all`):
 *   (f) pg Pool client, not pipelined (2 round trips: pg waits for each answer)
 *   (g) pg Pool, pipelined client (1)
 *   (h) fastify-pg-pool, `Promise.all` on `request.db`
 */
import fastifyPostgres from '@fastify/postgres'
import type pg from 'pg'
import { Arena, fixed, table, DURATION, ROUNDS, pgPool, type Measured } from './lib.js'

const MAX = 10
const CONNECTIONS = 20
const SQL = 'select $1::int as x'

type Query = (text: string, values?: unknown[]) => Promise<pg.QueryResult>

/** `fn` on a client of `pool`, released after. */
async function using<T> (pool: pg.Pool, fn: (query: Query) => Promise<T>): Promise<T> {
  const client = await pool.connect()
  try {
    return await fn((text, values) => client.query(text, values))
  } finally {
    client.release()
  }
}

function report (title: string, arena: Arena, results: Map<string, Measured>, trips: Record<string, string>): string {
  const base = results.get(arena.contenders[0]!.name)!
  const rows = arena.contenders.map(({ name }) => {
    const r = results.get(name)!
    return [name, trips[name.slice(0, 3)] ?? '?', fixed(r.rps), fixed(r.rps / base.rps, 3), fixed(r.cpuUs, 1), r.p50, r.p99]
  })
  return `#### ${title}\n\n` + table(['contender', 'round trips', 'req/s', 'ratio to first', 'server CPU per request (µs)', 'p50 (ms)', 'p99 (ms)'], ['---', '---:', '---:', '---:', '---:', '---:', '---:'], rows)
}

export async function pipeline (connectionString: string): Promise<string> {
  const tx = new Arena(connectionString)
  const plain = tx.pool(MAX)
  const piped = tx.pool(MAX, { pipeline: true } as pg.PoolConfig)
  await tx.add('(a) pg Pool, each awaited', (app) => {
    app.get('/', async () => await using(plain, async (q) => {
      await q('begin')
      const rows = [(await q(SQL, [1])).rows[0], (await q(SQL, [2])).rows[0]]
      await q('commit')
      return rows
    }))
  })
  await tx.add('(b) pipelined: BEGIN with s1', (app) => {
    app.get('/', async () => await using(piped, async (q) => {
      const [, first] = await Promise.all([q('begin'), q(SQL, [1])])
      const rows = [first.rows[0], (await q(SQL, [2])).rows[0]]
      await q('commit')
      return rows
    }))
  })
  await tx.add('(c) pipelined: all four at once', (app) => {
    app.get('/', async () => await using(piped, async (q) => {
      const [, first, second] = await Promise.all([q('begin'), q(SQL, [1]), q(SQL, [2]), q('commit')])
      return [first.rows[0], second.rows[0]]
    }))
  })
  await tx.add('(d) fastify-pg-pool, route transaction', async (app) => {
    await app.register(pgPool, { connectionString, max: MAX, prepare: false })
    app.get('/', { config: { pgPool: { transaction: true } } }, async (req) => [(await req.db.query(SQL, [1])).rows[0], (await req.db.query(SQL, [2])).rows[0]])
  })
  await tx.add('(e) @fastify/postgres, transact()', async (app) => {
    await app.register(fastifyPostgres, { connectionString, max: MAX })
    ;(app.pg.pool as unknown as pg.Pool).on('error', () => {})
    // (Typed as this plugin's fastify.pg, which merges over @fastify/postgres's.)
    const { transact } = app.pg as unknown as { transact: <T>(fn: (client: pg.PoolClient) => Promise<T>) => Promise<T> }
    app.get('/', async () => await transact(async (client) => [(await client.query(SQL, [1])).rows[0], (await client.query(SQL, [2])).rows[0]]))
  })
  const txResults = await tx.run(CONNECTIONS)

  const both = new Arena(connectionString)
  const plain2 = both.pool(MAX)
  const piped2 = both.pool(MAX, { pipeline: true } as pg.PoolConfig)
  await both.add('(f) pg Pool client, Promise.all', (app) => {
    app.get('/', async () => await using(plain2, async (q) => (await Promise.all([q(SQL, [1]), q(SQL, [2])])).map((r) => r.rows[0])))
  })
  await both.add('(g) pipelined client, Promise.all', (app) => {
    app.get('/', async () => await using(piped2, async (q) => (await Promise.all([q(SQL, [1]), q(SQL, [2])])).map((r) => r.rows[0])))
  })
  await both.add('(h) fastify-pg-pool, Promise.all on request.db', async (app) => {
    await app.register(pgPool, { connectionString, max: MAX, prepare: false })
    app.get('/', async (req) => (await Promise.all([req.db.query(SQL, [1]), req.db.query(SQL, [2])])).map((r) => r.rows[0]))
  })
  const bothResults = await both.run(CONNECTIONS)

  return `### Round trips: transactions and concurrent statements (pool max ${MAX}, ${CONNECTIONS} connections, median of ${ROUNDS} interleaved ${DURATION} s rounds; every contender unprepared)\n\n` +
    report('A transactional route, two statements', tx, txResults, { '(a)': '4', '(b)': '3', '(c)': '1', '(d)': '3', '(e)': '4' }) + '\n\n' +
    report('Two statements at once (`Promise.all`), no transaction', both, bothResults, { '(f)': '2', '(g)': '1', '(h)': '2' })
}
