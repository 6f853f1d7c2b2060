/**
 * Prepared statements: a realistic read (a join of two indexed tables, three parameters, five
 * rows back) and `select 1`, through
 *   (a) pg's Pool, `pool.query()` unnamed (the hand-written baseline: parsed and planned each time)
 *   (b) pg's Pool, `pool.query({ name })` named by hand (prepared once per connection)
 *   (c) fastify-pg-pool, `request.db.query()` with its defaults
 *   (d) the same with `prepare: false`
 * Pools of 10, 20 autocannon connections, median of interleaved rounds.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import pg from 'pg'
import { compare, fixed, listen, table, DURATION, ROUNDS, pgPool } from './lib.js'

const MAX = 10
const CONNECTIONS = 20

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

interface Workload { label: string, text: string, values: () => unknown[] | undefined }
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
  for (const { label, text, values } of WORKLOADS) {
    const apps: FastifyInstance[] = []
    const pools: pg.Pool[] = []
    const contenders: Array<{ name: string, url: string }> = []
    const add = async (name: string, build: (app: FastifyInstance) => Promise<void>): Promise<void> => {
      const app = Fastify()
      await build(app)
      apps.push(app)
      contenders.push({ name, url: await listen(app) })
    }
    const pool = (): pg.Pool => {
      const p = new pg.Pool({ connectionString, max: MAX })
      p.on('error', () => {})
      pools.push(p)
      return p
    }
    await add('(a) pg Pool, pool.query() unnamed', async (app) => {
      const p = pool()
      app.get('/', async () => (await p.query(text, values())).rows)
    })
    await add('(b) pg Pool, pool.query() named by hand', async (app) => {
      const p = pool()
      app.get('/', async () => (await p.query({ name: 'bench', text, values: values() })).rows)
    })
    await add('(c) fastify-pg-pool, request.db.query()', async (app) => {
      await app.register(pgPool, { connectionString, max: MAX })
      app.get('/', async (req) => (await req.db.query(text, values())).rows)
    })
    await add('(d) fastify-pg-pool, prepare: false', async (app) => {
      await app.register(pgPool, { connectionString, max: MAX, prepare: false })
      app.get('/', async (req) => (await req.db.query(text, values())).rows)
    })
    const results = await compare(contenders, CONNECTIONS)
    for (const app of apps) await app.close()
    for (const p of pools) await p.end()
    const base = results.get('(a) pg Pool, pool.query() unnamed')!
    const rows = contenders.map(({ name }) => {
      const r = results.get(name)!
      return [name, fixed(r.rps), fixed(r.rps / base.rps, 3), fixed(r.cpuUs, 1), r.p50, r.p99]
    })
    out.push(`#### ${label}\n\n` + table(['contender', 'req/s', 'ratio to (a)', 'server CPU per request (µs)', 'p50 (ms)', 'p99 (ms)'], ['---', '---:', '---:', '---:', '---:', '---:'], rows))
  }
  return `### Prepared statements (pool max ${MAX}, ${CONNECTIONS} connections, median of ${ROUNDS} interleaved ${DURATION} s rounds)\n\n` + out.join('\n\n')
}
