/**
 * What every benchmark shares: a real PostgreSQL (DATABASE_URL, else an embedded one), and
 * autocannon run in its own process so the load generator does not take the server's event loop.
 */
import { execFile } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import pg from 'pg'
import { EmbeddedServer } from '../test/helpers/postgres.js'

const exec = promisify(execFile)

/**
 * The plugin as users run it: the built package (`npm run bench` builds it first), typed from
 * the sources (a static import of dist/ would need a build before the typecheck).
 */
const built = pathToFileURL(resolve(import.meta.dirname, '../dist/esm/index.js')).href
export const { default: pgPool } = await import(built) as typeof import('../src/index.js')

/**
 * Another build of the plugin to compare with in the same run (a refactor's before and after):
 * BENCH_BASELINE=/path/to/other/checkout/dist/esm/index.js.
 */
const baseline = process.env.BENCH_BASELINE
export const baselinePgPool = baseline === undefined || baseline === ''
  ? undefined
  : (await import(pathToFileURL(resolve(baseline)).href) as typeof import('../src/index.js')).default

export const DURATION = Number(process.env.BENCH_DURATION ?? 5)
export const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)

export interface Measured {
  rps: number
  p50: number
  p99: number
  /** CPU time of this (server) process per request, µs: the cost the contender itself adds. */
  cpuUs: number
  /** CPU time of PostgreSQL's processes on this machine per request, µs (NaN where /proc cannot tell). */
  dbCpuUs: number
}

/** The embedded server's postmaster: its processes are the server's side of every request. */
let postmaster: number | undefined

/**
 * CPU time so far of the embedded PostgreSQL server (µs), read from /proc: its postmaster and its
 * children (the backends), and the backends that exited, in the postmaster's children's time
 * (cutime, cstime), so the sum never goes back. NaN with DATABASE_URL (a server elsewhere) or
 * without /proc.
 */
export function postgresCpuUs (): number {
  if (postmaster === undefined) return Number.NaN
  let ticks = 0
  try {
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue
      let stat: string
      try {
        stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      } catch {
        continue // gone meanwhile
      }
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (Number(pid) === postmaster) ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]) // utime, stime, cutime, cstime
      else if (Number(fields[1]) === postmaster) ticks += Number(fields[11]) + Number(fields[12])
    }
  } catch {
    return Number.NaN
  }
  // (Linux reports clock ticks of 1/100 s.)
  return ticks * 10_000
}

/**
 * BENCH_PIN=1 (with 2 cores or more, and `taskset`): the server (this process) runs on core 0,
 * the load generator and an embedded PostgreSQL on the others, so they do not take turns on
 * the server's core and its CPU per request is measured apart from theirs.
 */
const PIN = process.env.BENCH_PIN === '1'
const OTHERS = `1-${Math.max(1, availableParallelism() - 1)}`
if (PIN) await exec('taskset', ['-acp', '0', String(process.pid)])

/** A command as the load generator runs it: on the other cores when pinned. */
export function loadCommand (args: string[]): [string, string[]] {
  return PIN ? ['taskset', ['-c', OTHERS, process.execPath, ...args]] : [process.execPath, args]
}

/** autocannon in a child process; its JSON summary. */
export async function autocannon (url: string, connections: number, duration: number): Promise<any> {
  const [command, args] = loadCommand([
    'node_modules/autocannon/autocannon.js', '--json', '--timeout', '30',
    '-c', String(connections), '-d', String(duration), url
  ])
  const { stdout } = await exec(command, args, { maxBuffer: 64 * 1024 * 1024 })
  return JSON.parse(stdout)
}

/** One measurement: throughput and latency (ms) of `url` under `connections` concurrent clients. */
export async function measure (url: string, connections: number, duration = DURATION): Promise<Measured> {
  const cpu = process.cpuUsage()
  const db = postgresCpuUs()
  const result = await autocannon(url, connections, duration)
  const { user, system } = process.cpuUsage(cpu)
  const dbUs = postgresCpuUs() - db
  if (result.non2xx > 0 || result.errors > 0) throw new Error(`${url}: ${result.non2xx} non-2xx, ${result.errors} errors`)
  const requests = result.requests.total
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, cpuUs: (user + system) / requests, dbCpuUs: dbUs / requests }
}

/**
 * Each contender measured `ROUNDS` times, interleaved (A B C, B C A, ...), so a slow moment of the
 * machine does not land on one contender; the median round of each is kept.
 */
export async function compare (contenders: Array<{ name: string, url: string }>, connections: number): Promise<Map<string, Measured & { rounds: Measured[] }>> {
  for (const { url } of contenders) await autocannon(url, connections, 1) // warm up
  const runs = new Map<string, Measured[]>(contenders.map(({ name }) => [name, []]))
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < contenders.length; i++) {
      const { name, url } = contenders[(i + round) % contenders.length]!
      runs.get(name)!.push(await measure(url, connections))
    }
  }
  return new Map([...runs].map(([name, rounds]) => {
    const sorted = rounds.slice().sort((a, b) => a.rps - b.rps)
    return [name, { ...sorted[Math.floor(sorted.length / 2)]!, rounds }]
  }))
}

/**
 * The median over rounds of `of(a) - of(b)`, each round's two measured minutes apart at most: a
 * slow stretch of the machine lands on both, and cancels (the difference of two medians does not).
 */
export function pairedMedian (a: { rounds: Measured[] }, b: { rounds: Measured[] }, of: (m: Measured) => number): number {
  const differences = a.rounds.map((m, i) => of(m) - of(b.rounds[i]!)).sort((x, y) => x - y)
  const mid = differences.length / 2
  return differences.length % 2 === 1 ? differences[Math.floor(mid)]! : (differences[mid - 1]! + differences[mid]!) / 2
}

/**
 * The contenders of one table: each a Fastify app of its own, listening, and the pg Pools they
 * made; measured together (`compare`), then closed.
 */
export class Arena {
  readonly contenders: Array<{ name: string, url: string }> = []
  readonly #apps: FastifyInstance[] = []
  readonly #pools: pg.Pool[] = []
  readonly #connectionString: string

  constructor (connectionString: string) {
    this.#connectionString = connectionString
  }

  async add (name: string, build: (app: FastifyInstance) => Promise<void> | void): Promise<void> {
    const app = Fastify()
    await build(app)
    this.#apps.push(app)
    this.contenders.push({ name, url: await listen(app) })
  }

  /** A pg Pool of `max` connections (more pg options beside), closed with the arena. */
  pool (max: number, options: pg.PoolConfig = {}): pg.Pool {
    const pool = new pg.Pool({ connectionString: this.#connectionString, max, ...options })
    pool.on('error', () => {})
    this.#pools.push(pool)
    return pool
  }

  /** Every contender measured under `connections` concurrent clients (see `compare`); then all closed. */
  async run (connections: number): Promise<Map<string, Measured & { rounds: Measured[] }>> {
    try {
      return await compare(this.contenders, connections)
    } finally {
      await this.close()
    }
  }

  async close (): Promise<void> {
    for (const app of this.#apps.splice(0)) await app.close()
    for (const pool of this.#pools.splice(0)) await pool.end()
  }
}

export async function listen (app: FastifyInstance): Promise<string> {
  return await app.listen({ port: 0, host: '127.0.0.1' })
}

export async function database (): Promise<{ url: string, stop: () => Promise<void> }> {
  if (process.env.DATABASE_URL) return { url: process.env.DATABASE_URL, stop: async () => {} }
  const embedded = new EmbeddedServer()
  await embedded.start()
  postmaster = embedded.postmasterPid()
  // (Its backends inherit the postmaster's cores.)
  if (PIN) await exec('taskset', ['-acp', OTHERS, String(embedded.postmasterPid())])
  return { url: embedded.url(), stop: () => embedded.stop() }
}

/** A markdown table. */
export function table (head: string[], align: string[], rows: Array<Array<string | number>>): string {
  return [
    `| ${head.join(' | ')} |`,
    `| ${align.join(' | ')} |`,
    ...rows.map((row) => `| ${row.join(' | ')} |`)
  ].join('\n')
}

export const fixed = (n: number, digits = 0): string => n.toFixed(digits)
