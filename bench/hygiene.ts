/**
 * Cost of session hygiene per request: a route whose statement leaves session state (so the
 * connection gets a DISCARD ALL on return) against the same route without it, and the route
 * with `sessionReset: 'always'`. Same process, same run, autocannon in its own process.
 * `npm run bench:hygiene`. Environment: DATABASE_URL, BENCH_DURATION (s, default 10).
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import Fastify from 'fastify'
import pgPool, { type PgPoolOptions } from '../src/index.js'
import { EmbeddedServer } from '../test/helpers/postgres.js'

const DURATION = Number(process.env.BENCH_DURATION ?? 10)
const exec = promisify(execFile)

async function measure (options: PgPoolOptions, sql: string): Promise<{ rps: number, p50: number, p99: number }> {
  const app = Fastify()
  await app.register(pgPool, { ...options, max: 10 })
  app.get('/', async (req) => (await req.db.query(sql)).rowCount)
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  const args = ['node_modules/autocannon/autocannon.js', '--json', '-c', '20']
  await exec(process.execPath, [...args, '-d', '1', url])
  const { stdout } = await exec(process.execPath, [...args, '-d', String(DURATION), url], { maxBuffer: 64 * 1024 * 1024 })
  await app.close()
  const result = JSON.parse(stdout)
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99 }
}

const embedded = process.env.DATABASE_URL ? undefined : new EmbeddedServer()
await embedded?.start()
const connectionString = process.env.DATABASE_URL ?? embedded!.url()

const plain = await measure({ connectionString }, 'select 1')
const dirty = await measure({ connectionString }, "select set_config('app.tenant_id', '42', false)")
const always = await measure({ connectionString, sessionReset: 'always' }, 'select 1')
await embedded?.stop()

console.log(`\nSession hygiene: 20 connections, ${DURATION} s, pool max 10\n`)
console.log('| route | req/s | ratio | p50 (ms) | p99 (ms) |')
console.log('| --- | ---: | ---: | ---: | ---: |')
for (const [name, r] of [
  ['`select 1` (no reset: the baseline)', plain],
  ['`set_config(..., false)` (reset on return, auto)', dirty],
  ["`select 1` with `sessionReset: 'always'`", always]
] as const) {
  console.log(`| ${name} | ${r.rps.toFixed(0)} | ${(r.rps / plain.rps).toFixed(2)} | ${r.p50} | ${r.p99} |`)
}
