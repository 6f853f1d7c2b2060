/**
 * Pre-ping under steady load: the default `pingIdleMs` (1 s: a connection in steady use is never
 * idle that long, so it is not pinged) against `pingIdleMs: 0` (every reuse pinged, like
 * SQLAlchemy's pool_pre_ping). Pings per request are read from stats() over the measured run.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { autocannon, fixed, listen, measure, table, DURATION, ROUNDS, type Measured, pgPool } from './lib.js'

const CONNECTIONS = 20

export async function preping (connectionString: string): Promise<string> {
  const contenders: Array<{ name: string, app: FastifyInstance, url: string, runs: Array<Measured & { pings: number }> }> = []
  for (const [name, pingIdleMs] of [['pingIdleMs 1000 (default)', 1000], ['pingIdleMs 0 (always ping)', 0]] as const) {
    const app = Fastify()
    await app.register(pgPool, { connectionString, max: 10, pingIdleMs })
    app.get('/', async (req) => (await req.db.query('select 1 as x')).rows[0])
    contenders.push({ name, app, url: await listen(app), runs: [] })
  }
  for (const c of contenders) await autocannon(c.url, CONNECTIONS, 1)
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < contenders.length; i++) {
      const c = contenders[(i + round) % contenders.length]!
      const before = c.app.pg.stats()
      const measured = await measure(c.url, CONNECTIONS)
      const after = c.app.pg.stats()
      c.runs.push({ ...measured, pings: (after.pings - before.pings) / (after.acquires - before.acquires) })
    }
  }
  for (const c of contenders) await c.app.close()
  const median = (runs: Array<Measured & { pings: number }>): Measured & { pings: number } =>
    runs.slice().sort((a, b) => a.rps - b.rps)[Math.floor(runs.length / 2)]!
  const base = median(contenders[0]!.runs).rps
  const rows = contenders.map((c) => {
    const r = median(c.runs)
    return [c.name, r.pings.toFixed(4), fixed(r.rps), fixed(r.rps / base, 3), r.p50, r.p99]
  })
  return `### Pre-ping: steady \`select 1\` load (pool max 10, ${CONNECTIONS} connections, median of ${ROUNDS} interleaved ${DURATION} s rounds)\n\n` +
    table(['setting', 'pings per request', 'req/s', 'ratio', 'p50 (ms)', 'p99 (ms)'], ['---', '---:', '---:', '---:', '---:', '---:'], rows)
}
