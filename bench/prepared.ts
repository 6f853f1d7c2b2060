/**
 * Prepared statements: a realistic read (a join of two indexed tables, three parameters, five
 * rows back) and a one-parameter `select`, through
 *   (a) pg's Pool, `pool.query()` unnamed (the hand-written baseline: parsed and planned each time)
 *   (b) pg's Pool, `pool.query({ name })` named by hand (prepared once per connection)
 *   (c) fastify-pg-pool, `request.db.query()` with its defaults (prepared)
 *   (d) the same with `prepare: false`
 * Pools of 10, 20 autocannon connections, median of interleaved rounds.
 * Target: (c) ≥ 1.15 × (a) on the join; no loss on the one-parameter select.
 */
import pg from 'pg'
import { Arena, fixed, table, DURATION, ROUNDS, pgPool } from './lib.js'

const MAX = 10
const CONNECTIONS = 20
const TARGET = 1.15

const SCHEMA = `
  drop table if exists bench_orders, bench_users;
  create table bench_users (id int primary key, org_id int not null, name text not null);
  create table bench_orders (id int primary key, user_id int not null references bench_users, status text not null, total numeric not null, created_at timestamptz not null);
  insert into bench_users select i, i % 200, 'user ' || i from generate_series(1, 20000) i;
  insert into bench_orders select i, 1 + i % 20000, (array['open','paid','shipped'])[1 + i % 3], i % 1000, now() - (i || ' minutes')::interval from generate_series(1, 200000) i;
  create index on bench_users (org_id);
  create index on bench_orders (user_id, status, created_at);
  analyze bench_users; analyze bench_orders;`

/** Orders of one organisation in one status since a date: the newest five. */
const JOIN = `select o.id, o.total, o.created_at, u.name
  from bench_orders o join bench_users u on u.id = o.user_id
  where u.org_id = $1 and o.status = $2 and o.created_at > $3
  order by o.created_at desc limit 5`

let n = 0
/** The parameters of one request: organisations and statuses vary. */
function params (): unknown[] {
  n++
  return [n % 200, ['open', 'paid', 'shipped'][n % 3], new Date(Date.now() - 30 * 86_400_000)]
}

interface Workload { label: string, text: string, values: () => unknown[] }
const WORKLOADS: Workload[] = [
  { label: 'a join of two indexed tables, 3 parameters, 5 rows', text: JOIN, values: params },
  { label: '`select $1::int` (1 parameter)', text: 'select $1::int as x', values: () => [1] }
]

export async function prepared (connectionString: string): Promise<string> {
  const setup = new pg.Client({ connectionString })
  await setup.connect()
  await setup.query(SCHEMA)
  await setup.end()

  const out: string[] = []
  const ratios: number[] = []
  for (const { label, text, values } of WORKLOADS) {
    const arena = new Arena(connectionString)
    const unnamed = arena.pool(MAX)
    const named = arena.pool(MAX)
    await arena.add('(a) pg Pool, pool.query() unnamed', (app) => {
      app.get('/', async () => (await unnamed.query(text, values())).rows)
    })
    await arena.add('(b) pg Pool, pool.query() named by hand', (app) => {
      app.get('/', async () => (await named.query({ name: 'bench', text, values: values() })).rows)
    })
    await arena.add('(c) fastify-pg-pool, request.db.query() (prepared)', async (app) => {
      await app.register(pgPool, { connectionString, max: MAX })
      app.get('/', async (req) => (await req.db.query(text, values())).rows)
    })
    await arena.add('(d) fastify-pg-pool, prepare: false', async (app) => {
      await app.register(pgPool, { connectionString, max: MAX, prepare: false })
      app.get('/', async (req) => (await req.db.query(text, values())).rows)
    })
    const results = await arena.run(CONNECTIONS)
    const base = results.get(arena.contenders[0]!.name)!
    const rows = arena.contenders.map(({ name }) => {
      const r = results.get(name)!
      return [name, fixed(r.rps), fixed(r.rps / base.rps, 3), fixed(r.cpuUs, 1), r.p50, r.p99]
    })
    ratios.push(results.get(arena.contenders[2]!.name)!.rps / base.rps)
    out.push(`#### ${label}\n\n` + table(['contender', 'req/s', 'ratio to (a)', 'server CPU per request (µs)', 'p50 (ms)', 'p99 (ms)'], ['---', '---:', '---:', '---:', '---:', '---:'], rows))
  }
  const [join = 0, one = 0] = ratios
  const verdict = `**Verdict:** (c) / (a) on the join ${fixed(join, 3)} (target ≥ ${TARGET}: ${join >= TARGET ? 'met' : 'not met'}); ` +
    `on the one-parameter select ${fixed(one, 3)} (no loss beyond this machine's noise, ±5 %: ${one >= 0.95 ? 'met' : 'not met'}).`
  return `### Prepared statements (pool max ${MAX}, ${CONNECTIONS} connections, median of ${ROUNDS} interleaved ${DURATION} s rounds)\n\n` + out.join('\n\n') + '\n\n' + verdict
}
