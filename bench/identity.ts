/**
 * What a request identity costs (the `identity` option, row-level security), and why it is sent
 * in front of each statement rather than set on the session: three workloads, each through
 *   (a) fastify-pg-pool without an identity (the realistic read filters by tenant in its text,
 *       connected as the table's owner, which RLS does not bind)
 *   (b) the `identity` option: `set_config('role', ..., true), set_config('app.tenant_id', ..., true)`
 *       in front of each statement, in its transaction
 *   (c) by hand, on the session: `set_config(..., false)` as the request's first statement; the
 *       plugin's session reset (DISCARD ALL) when the connection comes back
 *   (d) by hand, PostgREST's way: the route in one transaction, `set_config(..., true)` first
 *   (e) the role and one tenant fixed for the connection's life (`options: -c role=...`): what
 *       the policy itself costs, without any per-request identity (not a way to serve many tenants)
 *   (f) the best a session-level identity could do, by hand on pg's Pool: `set_config(..., false)`
 *       in front of the request's first statement (same round trip), a targeted `RESET` before
 *       the connection goes back (a round trip of its own); no PgBouncer, and a failed first
 *       statement or a rolled-back transaction would undo it: not safe as it stands, measured for
 *       the decision only
 * Workloads: `select 1`; a realistic read (a page of a tenant's newest notes, 20 of 100 000, 100
 * tenants, an index on (tenant_id, id), RLS on; one parameter, so prepared in every contender);
 * that read three times per request.
 * Pools of 10, 20 autocannon connections, median of interleaved rounds. Round trips per request
 * are counted from pg's ReadyForQuery messages. Target: (b) ≤ one round trip more than (a), and
 * ≥ 0.90 × (a) in req/s.
 */
import type { ClientBase } from 'pg'
import pg from 'pg'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { Arena, fixed, pairedMedian, table, DURATION, ROUNDS, pgPool } from './lib.js'
import { PrefixedQuery, type Prefix } from '../src/pg-internals.js'

const MAX = 10
const CONNECTIONS = 20
const TARGET = 0.9
const TENANTS = 100

const SCHEMA = `
  drop table if exists bench_notes;
  do $$ begin
    if not exists (select from pg_roles where rolname = 'bench_tenant') then create role bench_tenant nologin; end if;
    if not exists (select from pg_roles where rolname = 'bench_login') then create role bench_login login password 'bench'; end if;
  end $$;
  grant bench_tenant to bench_login;
  create table bench_notes (id serial primary key, tenant_id int not null, body text not null, created_at timestamptz not null default now());
  insert into bench_notes (tenant_id, body) select 1 + i % ${TENANTS}, 'note ' || i from generate_series(1, 100000) i;
  create index on bench_notes (tenant_id, id);
  alter table bench_notes enable row level security;
  create policy by_tenant on bench_notes using (tenant_id = nullif(current_setting('app.tenant_id', true), '')::int);
  grant select on bench_notes to bench_tenant, bench_login;
  analyze bench_notes;`

/** A page of a tenant's notes: the policy picks the tenant, or (a) says it in the text. */
const READ = 'select id, body, created_at from bench_notes where id > $1 order by id desc limit 20'
const READ_FILTERED = 'select id, body, created_at from bench_notes where id > $1 and tenant_id = $2 order by id desc limit 20'

let n = 0
const tenantOf = (): number => 1 + (n++ % TENANTS)

interface Workload {
  label: string
  /** The request's statements, with the tenant in the text (a) or left to the policy (b, c, d). */
  run (req: FastifyRequest, tenant: number | undefined): Promise<unknown>
}

const WORKLOADS: Workload[] = [
  { label: '`select 1`', run: async (req) => (await req.db.query('select 1 as x')).rows },
  {
    label: "a page of a tenant's newest notes (20 of 100 000; RLS on)",
    run: async (req, tenant) => (await (tenant === undefined ? req.db.query(READ, [0]) : req.db.query(READ_FILTERED, [0, tenant]))).rows
  },
  {
    label: 'that read three times per request',
    run: async (req, tenant) => {
      const rows = []
      for (let i = 0; i < 3; i++) rows.push(...(await (tenant === undefined ? req.db.query(READ, [0]) : req.db.query(READ_FILTERED, [0, tenant]))).rows)
      return rows
    }
  }
]

/** Counts a contender's round trips (pg's ReadyForQuery messages) and requests. */
function counter (): { onConnect: (client: ClientBase) => void, count: (app: FastifyInstance) => void, perRequest: () => number } {
  let trips = 0
  let requests = 0
  // (onConnect runs again after a session reset: one listener per connection.)
  const counted = new WeakSet<ClientBase>()
  return {
    onConnect: (client) => {
      if (counted.has(client)) return
      counted.add(client)
      ;(client as unknown as { connection: { on (event: string, fn: () => void): void } }).connection.on('readyForQuery', () => { trips++ })
    },
    count: (app) => { app.addHook('onResponse', async () => { requests++ }) },
    perRequest: () => trips / requests
  }
}

const SET_SESSION = "select set_config('role', 'bench_tenant', false), set_config('app.tenant_id', $1, false)"
const RESET = 'reset role; reset app.tenant_id'

/** Runs `text` on `client` with `prefix` in front of it, in one round trip. */
function prefixed (client: pg.PoolClient, prefix: Prefix[], text: string, values: unknown[]): Promise<pg.QueryResult> {
  return new Promise((resolve, reject) => {
    client.query(new PrefixedQuery(prefix, { text, values, name: `bench_${text.length}` }, undefined, (error, result) => error ? reject(error) : resolve(result)) as never)
  })
}
const SET_LOCAL = "select set_config('role', 'bench_tenant', true), set_config('app.tenant_id', $1, true)"

export async function identity (connectionString: string): Promise<string> {
  const setup = new pg.Client({ connectionString })
  await setup.connect()
  await setup.query(SCHEMA)
  await setup.end()
  const login = new URL(connectionString)
  login.username = 'bench_login'
  login.password = 'bench'

  const out: string[] = []
  const verdicts: string[] = []
  for (const { label, run } of WORKLOADS) {
    const arena = new Arena(connectionString)
    const counters = [counter(), counter(), counter(), counter(), counter()]
    const [a, b, c, d, e] = counters as Array<ReturnType<typeof counter>> as [ReturnType<typeof counter>, ReturnType<typeof counter>, ReturnType<typeof counter>, ReturnType<typeof counter>, ReturnType<typeof counter>]
    await arena.add('(a) no identity (the tenant in the text)', async (app) => {
      await app.register(pgPool, { connectionString, max: MAX, onConnect: a.onConnect })
      a.count(app)
      app.get('/', async (req) => await run(req, tenantOf()))
    })
    await arena.add('(b) the identity option', async (app) => {
      await app.register(pgPool, {
        connectionString: login.toString(),
        max: MAX,
        onConnect: b.onConnect,
        identity: () => ({ role: 'bench_tenant', settings: { 'app.tenant_id': tenantOf() } })
      })
      b.count(app)
      app.get('/', async (req) => await run(req, undefined))
    })
    await arena.add('(c) by hand: set on the session, reset on return', async (app) => {
      await app.register(pgPool, { connectionString: login.toString(), max: MAX, onConnect: c.onConnect })
      c.count(app)
      app.get('/', async (req) => {
        await req.db.query(SET_SESSION, [String(tenantOf())])
        return await run(req, undefined)
      })
    })
    await arena.add('(d) by hand: one transaction per request', async (app) => {
      await app.register(pgPool, { connectionString: login.toString(), max: MAX, onConnect: d.onConnect })
      d.count(app)
      app.get('/', { config: { pgPool: { transaction: true } } }, async (req) => {
        await req.db.query(SET_LOCAL, [String(tenantOf())])
        return await run(req, undefined)
      })
    })
    await arena.add('(e) the policy alone: role and tenant fixed at connect', async (app) => {
      await app.register(pgPool, { connectionString: login.toString(), max: MAX, onConnect: e.onConnect, options: '-c role=bench_tenant -c app.tenant_id=7' })
      e.count(app)
      app.get('/', async (req) => await run(req, undefined))
    })
    const session = arena.pool(MAX, { connectionString: login.toString() })
    let fTrips = 0
    let fRequests = 0
    session.on('connect', (client) => { (client as unknown as { connection: { on (event: string, fn: () => void): void } }).connection.on('readyForQuery', () => { fTrips++ }) })
    await arena.add('(f) by hand: session-level set with the first statement, targeted RESET on return', async (app) => {
      app.get('/', async (req) => {
        const client = await session.connect()
        try {
          const set = { text: SET_SESSION, values: [String(tenantOf())], name: 'bench_set' }
          const fake = {
            db: {
              query: async (text: string, values: unknown[] = []) => {
                if (set.values.length === 0) return await client.query({ text, values, name: `bench_${text.length}` })
                const first = prefixed(client, [set], text, values)
                set.values = []
                return await first
              }
            }
          } as unknown as FastifyRequest
          const rows = await run(fake, undefined)
          await client.query(RESET)
          return rows
        } finally {
          client.release()
          fRequests++
        }
      })
    })
    const results = await arena.run(CONNECTIONS)
    const base = results.get(arena.contenders[0]!.name)!
    const tripsOf = (name: string, i: number): number => name.startsWith('(f)') ? fTrips / fRequests : counters[i]!.perRequest()
    const rows = arena.contenders.map(({ name }, i) => {
      const r = results.get(name)!
      return [name, fixed(r.rps), fixed(r.rps / base.rps, 3), fixed(tripsOf(name, i), 2), fixed(r.cpuUs, 1), fixed(r.dbCpuUs, 1), r.p50, r.p99]
    })
    out.push(`#### ${label}\n\n` + table(
      ['contender', 'req/s', 'ratio to (a)', 'round trips per request', 'app CPU per request (µs)', 'PostgreSQL CPU per request (µs)', 'p50 (ms)', 'p99 (ms)'],
      ['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:'],
      rows))
    const own = results.get(arena.contenders[1]!.name)!
    const policy = results.get(arena.contenders[4]!.name)!
    const ratio = own.rps / base.rps
    const trips = b.perRequest() - a.perRequest()
    const dbExtra = pairedMedian(own, base, (m) => m.dbCpuUs)
    verdicts.push(`${label}: (b) / (a) ${fixed(ratio, 3)} (≥ ${TARGET}: ${ratio >= TARGET ? 'met' : 'not met'}); ` +
      `(b) / (e), the policy's own cost taken out, ${fixed(own.rps / policy.rps, 3)}; ${fixed(trips, 2)} round trips more (≤ 1: ${trips <= 1 ? 'met' : 'not met'}); ` +
      `PostgreSQL CPU ${fixed(dbExtra, 1)} µs more per request than (a) (paired median)`)
  }
  return `### Row-level security: the identity (pool max ${MAX}, ${CONNECTIONS} connections, median of ${ROUNDS} interleaved ${DURATION} s rounds)\n\n` +
    out.join('\n\n') + '\n\n**Verdict:**\n' + verdicts.map((v) => `- ${v}`).join('\n')
}
