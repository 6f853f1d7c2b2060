/**
 * Impatient clients: 100 clients that give up after 200 ms, against 300 ms statements, pool 10.
 * What the database spends on requests whose client had already left, with and without the
 * plugin's cancel:
 *   (a) @fastify/postgres (pg's Pool): the statement runs to its end, whoever waits for it
 *   (b) fastify-pg-pool: the statement is cancelled when its request ends
 * Each handler checks out first, then runs `select pg_sleep(0.3)`; the server records, per
 * request, when its client left (the response closed unfinished) and when the statement settled
 * on the connection (its answer, or its cancellation, arrived). Time spent after the client left
 * is settled − max(left, sent). The load generator runs in its own process.
 * `npm run bench:impatient`; DATABASE_URL, BENCH_DURATION (s, default 10).
 */
import { execFile } from 'node:child_process'
import { subscribe } from 'node:diagnostics_channel'
import { performance } from 'node:perf_hooks'
import { promisify } from 'node:util'
import fastifyPostgres from '@fastify/postgres'
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify'
import type pg from 'pg'
import { database, fixed, listen, pgPool, table } from './lib.js'

const exec = promisify(execFile)
const DURATION = Number(process.env.BENCH_DURATION ?? 10)
const CLIENTS = 100
const PATIENCE_MS = 200
const MAX = 10
const SQL = 'select pg_sleep(0.3)'

interface Ledger { left: number, sent: number, settled: number }

/** Records one request: when its client left, when its statement was sent and when it settled. */
function track (reply: FastifyReply, ledgers: Ledger[]): Ledger {
  const entry: Ledger = { left: Infinity, sent: Infinity, settled: Infinity }
  ledgers.push(entry)
  reply.raw.once('close', () => { if (!reply.raw.writableEnded) entry.left = performance.now() })
  return entry
}

async function contender (name: string, url: string, ledgers: Ledger[]): Promise<string[]> {
  const { stdout } = await exec(process.execPath, ['bench/impatient-clients.mjs', `${url}/`, String(CLIENTS), String(PATIENCE_MS), String(DURATION)])
  // Statements still running when the clients stopped: let them settle.
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const load = JSON.parse(stdout) as { sent: number, answered: number, gaveUp: number }
  let wasted = 0
  let ran = 0
  for (const { left, sent, settled } of ledgers) {
    if (sent === Infinity || settled === Infinity) continue
    ran++
    if (left < settled) wasted += settled - Math.max(left, sent)
  }
  return [name, String(load.sent), String(load.answered), String(load.gaveUp), String(ran), fixed(wasted / 1000, 1), fixed(wasted / Math.max(1, ran), 1)]
}

const db = await database()
const apps: FastifyInstance[] = []
const rows: string[][] = []
const notes: string[] = []
try {
  {
    const app = Fastify()
    apps.push(app)
    await app.register(fastifyPostgres, { connectionString: db.url, max: MAX })
    ;(app.pg.pool as unknown as pg.Pool).on('error', () => {})
    const ledgers: Ledger[] = []
    app.get('/', async (_req, reply) => {
      const entry = track(reply, ledgers)
      const client = await (app.pg.pool as unknown as pg.Pool).connect()
      try {
        entry.sent = performance.now()
        await client.query(SQL).finally(() => { entry.settled = performance.now() })
      } finally {
        client.release()
      }
      return 'ok'
    })
    rows.push(await contender('(a) @fastify/postgres: runs to its end', await listen(app), ledgers))
  }
  {
    const app = Fastify()
    apps.push(app)
    await app.register(pgPool, { connectionString: db.url, max: MAX, underPressure: false })
    const ledgers: Ledger[] = []
    app.get('/', async (req, reply) => {
      const entry = track(reply, ledgers)
      await req.db.connection()
      entry.sent = performance.now()
      await req.db.query(SQL).finally(() => { entry.settled = performance.now() })
      return 'ok'
    })
    const cancels: number[] = []
    subscribe('fastify-pg-pool:cancel', (message) => { cancels.push((message as { durationMs: number }).durationMs) })
    rows.push(await contender('(b) fastify-pg-pool: cancelled at the request end', await listen(app), ledgers))
    cancels.sort((x, y) => x - y)
    const at = (q: number): string => fixed(cancels[Math.min(cancels.length - 1, Math.floor(q * cancels.length))] ?? 0, 1)
    notes.push(`(b): ${cancels.length} cancels; from the cancel sent to the statement stopped and the server's acknowledgement: p50 ${at(0.5)} ms, p90 ${at(0.9)} ms, p99 ${at(0.99)} ms`)
  }
} finally {
  for (const app of apps) await app.close()
  await db.stop()
}
const [a, b] = rows.map((r) => Number(r[5]))
const [perA, perB] = rows.map((r) => Number(r[6]))
console.log(`### Impatient clients: ${CLIENTS} clients giving up after ${PATIENCE_MS} ms, \`${SQL}\`, pool ${MAX}, ${DURATION} s\n`)
console.log(table(
  ['contender', 'requests', 'answered', 'gave up', 'statements run', 'database time after the client left (s)', 'per statement run (ms)'],
  ['---', '---:', '---:', '---:', '---:', '---:', '---:'], rows))
console.log(`\n(b) / (a): ${fixed(100 * (b ?? 0) / Math.max(a ?? 1, 1e-9), 1)} % of the time spent for clients that had left; per statement run, ${fixed(100 * (perB ?? 0) / Math.max(perA ?? 1, 1e-9), 1)} % (a cancel frees the connection, so (b) starts more statements, most of them for clients that leave too)`)
for (const note of notes) console.log(note)
