/**
 * Session hygiene: a route whose statement leaves session state (so its connection gets a
 * DISCARD ALL on return, `sessionReset: 'auto'`) against the same route without it, and a plain
 * route with `sessionReset: 'always'`.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import type { PgPoolOptions } from '../src/index.js'
import { compare, fixed, listen, table, DURATION, ROUNDS, pgPool } from './lib.js'

const CONNECTIONS = 20

export async function hygiene (connectionString: string): Promise<string> {
  const apps: FastifyInstance[] = []
  const contenders: Array<{ name: string, url: string }> = []
  const variants: Array<[string, PgPoolOptions, string]> = [
    ['`select 1`, nothing to reset (baseline)', {}, 'select 1'],
    ["`set_config(..., false)`: DISCARD ALL on return ('auto')", {}, "select set_config('app.tenant_id', '42', false)"],
    ["`select 1` with `sessionReset: 'always'`", { sessionReset: 'always' }, 'select 1']
  ]
  for (const [name, options, sql] of variants) {
    const app = Fastify()
    await app.register(pgPool, { connectionString, max: 10, ...options })
    app.get('/', async (req) => (await req.db.query(sql)).rowCount)
    apps.push(app)
    contenders.push({ name, url: await listen(app) })
  }
  const results = await compare(contenders, CONNECTIONS)
  for (const app of apps) await app.close()
  const base = results.get(contenders[0]!.name)!
  const rows = contenders.map(({ name }) => {
    const r = results.get(name)!
    // At saturation each request costs 1/rps of the machine: the difference is the reset's cost.
    const extraUs = (1 / r.rps - 1 / base.rps) * 1e6
    return [name, fixed(r.rps), fixed(r.rps / base.rps, 3), name === contenders[0]!.name ? '—' : fixed(extraUs), r.p50, r.p99]
  })
  return `### Session hygiene: cost of the reset (pool max 10, ${CONNECTIONS} connections, median of ${ROUNDS} interleaved ${DURATION} s rounds)\n\n` +
    table(['route', 'req/s', 'ratio', 'machine time per request (µs, vs baseline)', 'p50 (ms)', 'p99 (ms)'], ['---', '---:', '---:', '---:', '---:', '---:'], rows)
}
