/**
 * Overload: a pool of 10 connections, 50 ms queries (capacity 10 / 0.05 s = 200 requests/s),
 * 100 clients for BENCH_DURATION seconds, each on its own keep-alive connection, in three
 * behaviours (bench/overload-clients.mjs, in its own process; latency measured there, at the
 * client):
 *   flood    sends again at once after a 503 (autocannon's loop)
 *   retry    sends again 5 ms after a 503
 *   polite   waits what Retry-After says after a 503
 * Contenders, in one process, measured in interleaved rounds (median round kept):
 *   (a)  fastify-pg-pool, the defaults but `maxWaiting: 10` (shedding through under-pressure)
 *   (a') the same with `closeShedConnections: true` (each 503 closes its keep-alive connection)
 *   (b)  @fastify/postgres with the same pool (pg-pool queues every request)
 *   (c)  a bare route answering 503 at once: the floor of what a shed request can cost
 *   (c') the same with `Connection: close`
 * Part of `npm run bench` (alone: `npm run bench:overload`). BENCH_DURATION (s per round,
 * default 5), BENCH_ROUNDS (default 3), BENCH_CLIENTS (default 100), BENCH_BEHAVIOURS (default
 * "flood,retry,polite").
 * Targets, per behaviour: (a)'s goodput ≥ 97 % of capacity and ≥ (b)'s; (a)'s 2xx p99 ≤ 150 ms;
 * (a)'s 503 p99 ≤ 2 × (c)'s; no answer but 200 and 503.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import fastifyPostgres from '@fastify/postgres'
import type pg from 'pg'
import { Arena, DURATION, ROUNDS, fixed, loadCommand, pgPool, table } from './lib.js'

const exec = promisify(execFile)
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 100)
const BEHAVIOURS = (process.env.BENCH_BEHAVIOURS ?? 'flood,retry,polite').split(',')
const MAX = 10
const QUERY_S = 0.05
const CAPACITY = MAX / QUERY_S
const SQL = `select pg_sleep(${QUERY_S})`

interface Latency { count: number, p50: number, p90: number, p99: number, max: number }
interface Load { statuses: Record<string, Latency>, errors: number, connections: number }
interface Round { goodput: number, ok: Latency | undefined, shed: Latency | undefined, other: number, connections: number }

async function load (url: string, behaviour: string): Promise<Round> {
  const [command, args] = loadCommand(['bench/overload-clients.mjs', url, String(CLIENTS), String(DURATION), behaviour])
  const { stdout } = await exec(command, args, { maxBuffer: 16 * 1024 * 1024 })
  const { statuses, errors, connections } = JSON.parse(stdout) as Load
  const ok = statuses['200']
  const shed = statuses['503']
  let other = errors
  for (const [status, { count }] of Object.entries(statuses)) if (status !== '200' && status !== '503') other += count
  return { goodput: (ok?.count ?? 0) / DURATION, ok, shed, other, connections }
}

const GOODPUT_TARGET = 0.97
const OK_P99_TARGET_MS = 150

export async function overload (connectionString: string): Promise<string> {
  const arena = new Arena(connectionString)
  const lines: string[] = []
  await arena.add('(a) fastify-pg-pool', async (app) => {
    await app.register(pgPool, { connectionString, max: MAX, maxWaiting: 10 })
    app.get('/', async (req) => (await req.db.query(SQL)).rowCount)
  })
  await arena.add("(a') (a) with closeShedConnections", async (app) => {
    await app.register(pgPool, { connectionString, max: MAX, maxWaiting: 10, closeShedConnections: true })
    app.get('/', async (req) => (await req.db.query(SQL)).rowCount)
  })
  await arena.add('(b) @fastify/postgres', async (app) => {
    await app.register(fastifyPostgres, { connectionString, max: MAX })
    // pg-pool crashes the process on an idle client's error unless someone listens.
    ;(app.pg.pool as unknown as pg.Pool).on('error', () => {})
    app.get('/', async () => (await app.pg.query(SQL)).rowCount)
  })
  await arena.add('(c) bare 503 (floor)', (app) => {
    app.get('/', async (_req, reply) => reply.code(503).header('retry-after', 1).send({ statusCode: 503 }))
  })
  await arena.add("(c') bare 503, Connection: close", (app) => {
    app.get('/', async (_req, reply) => reply.code(503).header('retry-after', 1).header('connection', 'close').send({ statusCode: 503 }))
  })
  const { contenders } = arena
  try {
    for (const behaviour of BEHAVIOURS) {
      const rounds = new Map<string, Round[]>(contenders.map(({ name }) => [name, []]))
      for (let round = 0; round < ROUNDS; round++) {
        for (let i = 0; i < contenders.length; i++) {
          const { name, url } = contenders[(i + round) % contenders.length]!
          rounds.get(name)!.push(await load(url, behaviour))
        }
      }
      const rows: string[][] = []
      const medians = new Map<string, Round>()
      for (const [name, measured] of rounds) {
        // The median round by goodput (the floors: by 503 p99).
        const key = (r: Round): number => r.ok === undefined ? (r.shed?.p99 ?? 0) : r.goodput
        const median = measured.slice().sort((x, y) => key(x) - key(y))[Math.floor(measured.length / 2)]!
        medians.set(name.slice(0, 3), median)
        const ms = (v: number | undefined): string => v === undefined ? '—' : fixed(v, 1)
        const range = (pick: (r: Round) => number | undefined): string => {
          const values = measured.map(pick).filter((v): v is number => v !== undefined)
          return values.length === 0 ? '—' : `${fixed(Math.min(...values), 1)}–${fixed(Math.max(...values), 1)}`
        }
        rows.push([
          name,
          median.ok === undefined ? '—' : fixed(median.goodput, 1),
          median.ok === undefined ? '—' : `${fixed(100 * median.goodput / CAPACITY, 1)} %`,
          ms(median.ok?.p50), ms(median.ok?.p99), range((r) => r.ok?.p99),
          String(median.shed?.count ?? 0), ms(median.shed?.p50), ms(median.shed?.p99), range((r) => r.shed?.p99),
          String(median.other), String(median.connections)
        ])
      }
      lines.push(`#### ${behaviour} clients: ${CLIENTS} clients, pool ${MAX}, ${QUERY_S * 1000} ms queries (capacity ${CAPACITY} req/s), median of ${ROUNDS} interleaved ${DURATION} s rounds\n`)
      lines.push(table(
        ['contender', 'goodput (2xx/s)', 'of capacity', 'p50 2xx (ms)', 'p99 2xx (ms)', 'p99 2xx, all rounds', '503s', 'p50 503 (ms)', 'p99 503 (ms)', 'p99 503, all rounds', 'other', 'connections opened'],
        ['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:'], rows))
      lines.push('', verdict(medians), '')
    }
  } finally {
    await arena.close()
  }
  return `### Overload\n\n${lines.join('\n')}`
}

/** Each target, met or not, for one behaviour's medians. */
function verdict (medians: Map<string, Round>): string {
  const a = medians.get('(a)')!
  const b = medians.get('(b)')!
  const floor = medians.get('(c)')!
  const share = a.goodput / CAPACITY
  const okP99 = a.ok?.p99 ?? Infinity
  const shedP99 = a.shed?.p99 ?? 0
  const floorP99 = floor.shed?.p99 ?? 0
  const met = (ok: boolean): string => ok ? 'met' : 'not met'
  return `**Verdict:** goodput ${fixed(100 * share, 1)} % of capacity (≥ ${100 * GOODPUT_TARGET} %: ${met(share >= GOODPUT_TARGET)}; ` +
    `≥ (b)'s ${fixed(100 * b.goodput / CAPACITY, 1)} %: ${met(a.goodput >= b.goodput)}); 2xx p99 ${fixed(okP99, 1)} ms (≤ ${OK_P99_TARGET_MS}: ${met(okP99 <= OK_P99_TARGET_MS)}); ` +
    `503 p99 ${fixed(shedP99, 1)} ms (≤ 2 × the floor's ${fixed(floorP99, 1)}: ${met(shedP99 <= 2 * floorP99)}); other answers ${a.other} (0: ${met(a.other === 0)}).`
}
