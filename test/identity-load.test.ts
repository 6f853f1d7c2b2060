/**
 * Row-level security under load, with faults: thousands of requests from many tenants (and some
 * with no identity) over real HTTP, a pool much smaller than the concurrency so connections pass
 * from tenant to tenant all the time, while backends are terminated, connections reset under
 * statements, and clients abort at random moments. Not one row of another tenant is ever
 * returned or written; a request without an identity sees nothing and writes nothing.
 */
import t from 'tap'
import type { FastifyRequest } from 'fastify'
import { TcpProxy } from './helpers/proxy.js'
import { assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { tenants } from './helpers/tenants.js'
import { listen, send } from './helpers/util.js'

const db = await setupDatabase(t)
const TENANTS = 40
const tn = await tenants(db, { tenants: TENANTS, rowsEach: 2 })

interface Seen { tenants: number[], wrote?: number[] }

t.test('many tenants, a small pool, faults: no row of another tenant, ever', async (t) => {
  const proxy = await TcpProxy.start(Number(new URL(db.url).port))
  t.teardown(() => proxy.close())
  const url = new URL(tn.url)
  url.port = String(proxy.port)
  const app = await buildApp(t, db, {
    connectionString: url.toString(),
    max: 4,
    maxWaiting: Infinity,
    acquireTimeoutMs: 10_000,
    underPressure: false,
    identity: tn.fromHeader
  })
  const tenantsOf = (rows: Array<{ tenant_id: number }>): number[] => [...new Set(rows.map((r) => r.tenant_id))]
  const insert = 'insert into notes (tenant_id, body) values (nullif(current_setting(\'app.tenant_id\', true), \'\')::int, $1) returning tenant_id'
  const bodyOf = (req: FastifyRequest): string => `asked ${String(req.headers['x-tenant'] ?? 'none')} ${String(req.id)}`
  const paths: Record<string, { config?: object, handler: (req: FastifyRequest) => Promise<Seen> }> = {
    read: { handler: async (req) => ({ tenants: tenantsOf((await req.db.query('select tenant_id from notes')).rows) }) },
    prepared: { handler: async (req) => ({ tenants: tenantsOf((await req.db.query('select tenant_id from notes where id > $1', [0])).rows) }) },
    slow: { handler: async (req) => ({ tenants: tenantsOf((await req.db.query('select tenant_id, pg_sleep(0.02) from notes where id > $1', [0])).rows) }) },
    retry: { handler: async (req) => ({ tenants: tenantsOf((await req.db.query({ text: 'select tenant_id from notes where id > $1', values: [0], retry: true })).rows) }) },
    write: {
      config: { pgPool: { transaction: true } },
      handler: async (req) => {
        const wrote = tenantsOf((await req.db.query(insert, [bodyOf(req)])).rows)
        return { wrote, tenants: tenantsOf((await req.db.query('select tenant_id from notes')).rows) }
      }
    },
    transaction: {
      handler: async (req) => await req.db.transaction(async (tx) => {
        const wrote = tenantsOf((await tx.query(insert, [bodyOf(req)])).rows)
        return { wrote, tenants: tenantsOf((await tx.query('select tenant_id from notes where id > $1', [0])).rows) }
      })
    },
    client: {
      handler: async (req) => {
        const client = await req.db.connection()
        const [a, b] = await Promise.all([client.query('select tenant_id from notes'), client.query('select tenant_id from notes where id > $1', [0])])
        return { tenants: tenantsOf([...a.rows, ...b.rows]) }
      }
    }
  }
  for (const [path, { config = {}, handler }] of Object.entries(paths)) app.get(`/${path}`, { config }, async (req) => await handler(req))
  const base = await listen(app)

  const REQUESTS = 3000
  const CONCURRENCY = 24
  const names = Object.keys(paths)
  const problems: string[] = []
  const statuses: Record<string, number> = {}
  let served = 0
  let aborted = 0
  let next = 0
  const faults = setInterval(() => {
    // Now a backend terminated, now every connection reset mid-stream.
    if (Math.random() < 0.7) db.admin("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'fpp-app' and pid = (select pid from pg_stat_activity where application_name = 'fpp-app' order by random() limit 1)").catch(() => {})
    else proxy.reset()
  }, 120)
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < REQUESTS) {
      const i = next++
      const tenant = i % 9 === 0 ? undefined : 1 + (i * 7) % TENANTS
      const path = names[i % names.length] as string
      const sent = send(`${base}/${path}`, { headers: tenant === undefined ? {} : { 'x-tenant': String(tenant) } })
      // About one in eight is aborted at a random moment.
      if (i % 8 === 3) setTimeout(() => sent.req.destroy(), Math.random() * 30)
      const outcome = await sent.done
      if (outcome instanceof Error) {
        aborted++
        continue
      }
      statuses[outcome.status] = (statuses[outcome.status] ?? 0) + 1
      if (outcome.status !== 200) {
        const failure = JSON.parse(outcome.body) as { code?: string }
        statuses[`${outcome.status} ${failure.code ?? '?'}`] = (statuses[`${outcome.status} ${failure.code ?? '?'}`] ?? 0) + 1
        // The policy refuses a write only without an identity (or with another tenant's).
        if (failure.code === '42501' && tenant !== undefined) problems.push(`${path} as ${tenant} was refused by the policy`)
        continue
      }
      served++
      const seen = JSON.parse(outcome.body) as Seen
      const wanted = tenant === undefined ? [] : [tenant]
      if (seen.tenants.some((other) => other !== tenant)) problems.push(`${path} as ${String(tenant)} saw ${JSON.stringify(seen.tenants)}`)
      if (seen.wrote !== undefined && JSON.stringify(seen.wrote) !== JSON.stringify(wanted)) problems.push(`${path} as ${String(tenant)} wrote ${JSON.stringify(seen.wrote)}`)
    }
  }))
  clearInterval(faults)
  t.comment(`served ${served}, aborted ${aborted}, statuses ${JSON.stringify(statuses)}`)
  t.same(problems, [], 'no response held a row of another tenant (nor, without an identity, any row)')
  t.ok(served > REQUESTS / 2, `most requests were served (${served})`)
  // What was written, read around RLS: each row under the tenant that asked for it.
  const { rows } = await db.admin<{ tenant_id: number, body: string }>("select tenant_id, body from notes where body like 'asked %'")
  const misplaced = rows.filter((row) => row.body.split(' ')[1] !== String(row.tenant_id))
  t.same(misplaced, [], 'every row written is under the tenant that asked')
  t.notOk(rows.some((row) => row.body.startsWith('asked none')), 'a request without an identity wrote nothing')
  t.ok(rows.length > 0)
  // What is left on the pool's connections: no role, no setting.
  await assertReturned(t, app, db)
  const { rows: [after] } = await app.pg.query("select current_user as user, coalesce(current_setting('app.tenant_id', true), '') as s")
  t.same(after, { user: tn.login, s: '' }, 'the session holds neither the role nor the setting')
})
