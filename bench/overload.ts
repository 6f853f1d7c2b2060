/**
 * Overload: a pool of 10 connections, 50 ms queries, 100 concurrent clients for 10 s (capacity
 * 10 / 0.05 s = 200 requests/s). Contenders, in one process and one run:
 *   (a) fastify-pg-pool (bounded queue + shedding through under-pressure, the defaults)
 *   (b) fastify-pg-pool with shedding off (unbounded queue, under-pressure not registered)
 *   (c) @fastify/postgres with the same pool size
 * Latency per status is measured in the server (Fastify's reply.elapsedTime); autocannon drives
 * the load from its own process, so the load generator does not steal the server's event loop.
 * Not part of `npm test`: `npm run bench:overload`.
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_DURATION (s, default 10),
 * BENCH_CONNECTIONS (default 100).
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import fastifyPostgres from '@fastify/postgres'
import Fastify, { type FastifyInstance } from 'fastify'
import type pg from 'pg'
import { EmbeddedServer } from '../test/helpers/postgres.js'
import { pgPool } from './lib.js'

const DURATION = Number(process.env.BENCH_DURATION ?? 10)
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 100)
const MAX = 10
const QUERY_S = 0.05
const CAPACITY = MAX / QUERY_S
const SQL = `select pg_sleep(${QUERY_S})`

interface Row {
  contender: string
  goodput: number
  twoXX: number
  fiveOhThree: number
  other: number
  p50ok: number
  p99ok: number
  p50shed: number
  p99shed: number
}

function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!
}

const run$ = promisify(execFile)

/** autocannon in a child process; its JSON summary. */
async function autocannon (url: string, connections: number, duration: number): Promise<any> {
  const { stdout } = await run$(process.execPath, [
    'node_modules/autocannon/autocannon.js', '--json', '--timeout', '30',
    '-c', String(connections), '-d', String(duration), url
  ], { maxBuffer: 64 * 1024 * 1024 })
  return JSON.parse(stdout)
}

async function run (name: string, build: (app: FastifyInstance) => Promise<void>): Promise<Row> {
  const app = Fastify()
  const ok: number[] = []
  const shed: number[] = []
  app.addHook('onResponse', async (_req, reply) => {
    if (reply.statusCode < 300) ok.push(reply.elapsedTime)
    else if (reply.statusCode === 503) shed.push(reply.elapsedTime)
  })
  await build(app)
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  // Warm up the pool, then measure.
  await autocannon(url, MAX, 1)
  ok.length = 0
  shed.length = 0
  const result = await autocannon(url, CONNECTIONS, DURATION)
  await app.close()
  ok.sort((a, b) => a - b)
  shed.sort((a, b) => a - b)
  // Counted by the client: what it received.
  const codes = result.statusCodeStats as Record<string, { count: number }>
  const twoXX = result['2xx'] as number
  const fiveOhThree = codes['503']?.count ?? 0
  const all = Object.values(codes).reduce((sum, c) => sum + c.count, 0)
  return {
    contender: name,
    goodput: twoXX / DURATION,
    twoXX,
    fiveOhThree,
    other: all - twoXX - fiveOhThree + result.errors + result.timeouts,
    p50ok: percentile(ok, 0.5),
    p99ok: percentile(ok, 0.99),
    p50shed: percentile(shed, 0.5),
    p99shed: percentile(shed, 0.99)
  }
}

const embedded = process.env.DATABASE_URL ? undefined : new EmbeddedServer()
await embedded?.start()
const connectionString = process.env.DATABASE_URL ?? embedded!.url()

const rows: Row[] = []
rows.push(await run('(a) fastify-pg-pool', async (app) => {
  await app.register(pgPool, { connectionString, max: MAX })
  app.get('/', async (req) => (await req.db.query(SQL)).rowCount)
}))
rows.push(await run('(b) fastify-pg-pool, shedding off', async (app) => {
  await app.register(pgPool, { connectionString, max: MAX, maxWaiting: Infinity, underPressure: false })
  app.get('/', async (req) => (await req.db.query(SQL)).rowCount)
}))
rows.push(await run('(c) @fastify/postgres', async (app) => {
  await app.register(fastifyPostgres, { connectionString, max: MAX })
  // pg-pool crashes the process on an idle client's error unless someone listens.
  ;(app.pg.pool as unknown as pg.Pool).on('error', () => {})
  app.get('/', async () => (await app.pg.query(SQL)).rowCount)
}))
await embedded?.stop()

const ms = (v: number): string => Number.isNaN(v) ? '—' : v.toFixed(1)
console.log(`\nOverload: pool max ${MAX}, ${QUERY_S * 1000} ms queries, ${CONNECTIONS} connections, ${DURATION} s; capacity ${CAPACITY} req/s\n`)
console.log('| contender | goodput (2xx/s) | % of capacity | 2xx | 503 | other | p50 2xx (ms) | p99 2xx (ms) | p50 503 (ms) | p99 503 (ms) |')
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
for (const r of rows) {
  console.log(`| ${r.contender} | ${r.goodput.toFixed(1)} | ${(100 * r.goodput / CAPACITY).toFixed(1)} % | ${r.twoXX} | ${r.fiveOhThree} | ${r.other} | ${ms(r.p50ok)} | ${ms(r.p99ok)} | ${ms(r.p50shed)} | ${ms(r.p99shed)} |`)
}
