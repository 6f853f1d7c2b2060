/**
 * A primary and its real streaming replica (helpers/replica.ts), registered as the default
 * database and `replica`: reads on the replica see the primary's writes once replayed, replica lag
 * does not hold the primary back, a saturated replica sheds only its own routes, a replica down
 * (stopped, or not answering) gives its routes a coded 503 within the checkout deadline while
 * the primary's routes answer 200, a fallback route is served by the primary meanwhile, an
 * aborted request returns both connections, and app.close() closes both pools. Figures are
 * printed as comments (latency measured at the client).
 */
import Fastify, { type FastifyInstance } from 'fastify'
import pg from 'pg'
import t from 'tap'
import pgPool, { type PgPoolOptions } from '../src/index.js'
import { startExample } from './helpers/example.js'
import { silentServer } from './helpers/net.js'
import { TcpProxy } from './helpers/proxy.js'
import { startReplicaPair } from './helpers/replica.js'
import { deferred, listen, send, until } from './helpers/util.js'

declare module '../src/index.js' {
  interface PgDatabases { replica: true }
}

const pair = await startReplicaPair(t)
{
  const client = new pg.Client({ connectionString: pair.primary.url })
  await client.connect()
  await client.query('create table posts (id serial primary key, title text not null)')
  await client.end()
  await pair.caughtUp()
}

async function build (t: { teardown (fn: () => unknown): void }, replica: PgPoolOptions = {}, primary: PgPoolOptions = {}, routes?: (app: FastifyInstance) => void): Promise<{ app: FastifyInstance, base: string }> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(pgPool, { connectionString: pair.primary.url, max: 4, ...primary })
  await app.register(pgPool, { name: 'replica', connectionString: pair.replica.url, max: 4, ...replica })
  app.post('/posts', async (req) => {
    const { rows } = await req.db.query('insert into posts (title) values ($1) returning id', [(req.body as { title: string }).title])
    return rows[0]
  })
  app.get('/posts/:id', { config: { pgPool: { db: 'replica' } } }, async (req) => {
    const { rows } = await req.db.query('select id, title, pg_is_in_recovery() as replica from posts where id = $1', [(req.params as { id: string }).id])
    return rows[0] ?? { missing: true }
  })
  app.get('/feed', { config: { pgPool: { db: 'replica' } } }, async (req) => {
    const { rows } = await req.db.query('select pg_sleep(0.05), count(*)::int as n, pg_is_in_recovery() as replica from posts')
    return rows[0]
  })
  app.get('/feed-or-primary', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => {
    const { rows } = await req.db.query('select count(*)::int as n, pg_is_in_recovery() as replica from posts')
    return rows[0]
  })
  routes?.(app)
  const base = await listen(app)
  return { app, base }
}

interface Outcome { status: number, code: string | undefined, ms: number, body: any }

async function get (url: string, init?: RequestInit): Promise<Outcome> {
  const started = performance.now()
  const res = await fetch(url, init)
  const text = await res.text()
  const ms = performance.now() - started
  let body: any = text
  try { body = JSON.parse(text) } catch {}
  return { status: res.status, code: body?.code, ms, body }
}

const write = (base: string, title: string): Promise<Outcome> =>
  get(`${base}/posts`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title }) })

/** `clients` loops calling `request` until `ms` have passed; every outcome. */
async function load (clients: number, ms: number, request: (i: number) => Promise<Outcome>): Promise<Outcome[]> {
  const until = performance.now() + ms
  const outcomes: Outcome[] = []
  let n = 0
  await Promise.all(Array.from({ length: clients }, async () => {
    while (performance.now() < until) outcomes.push(await request(n++))
  }))
  return outcomes
}

function describe (outcomes: Outcome[]): string {
  const by: Record<string, number> = {}
  for (const o of outcomes) by[`${o.status}${o.code === undefined ? '' : ' ' + o.code}`] = (by[`${o.status}${o.code === undefined ? '' : ' ' + o.code}`] ?? 0) + 1
  const ms = outcomes.map((o) => o.ms).sort((a, b) => a - b)
  const at = (q: number): number => Math.round(ms[Math.min(ms.length - 1, Math.floor(q * ms.length))] ?? 0)
  return `${outcomes.length} requests: ${JSON.stringify(by)}; p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${at(1)} ms`
}

t.test('reads on the replica see the primary\'s writes once replayed; lag does not hold the primary back', async (t) => {
  const { app, base } = await build(t)
  const created = await write(base, 'first')
  t.equal(created.status, 200)
  await pair.caughtUp()
  t.match((await get(`${base}/posts/${created.body.id}`)).body, { title: 'first', replica: true }, 'read on the replica')

  await pair.pauseReplay()
  const writes = await load(4, 500, (i) => write(base, `lagging ${i}`))
  t.ok(writes.every((o) => o.status === 200), 'every write on the primary answered 200 while the replica lags')
  t.comment(`writes while replay is paused: ${describe(writes)}`)
  const last = writes.at(-1)?.body.id
  t.match((await get(`${base}/posts/${last}`)).body, { missing: true }, 'the replica does not see them yet')
  await pair.resumeReplay()
  await pair.caughtUp()
  t.match((await get(`${base}/posts/${last}`)).body, { title: /^lagging/, replica: true }, 'it does once replayed')
  t.equal(app.pg.replica.stats().active, 0)
})

t.test('a saturated replica sheds only its own routes; the primary\'s answer 200', async (t) => {
  const { app, base } = await build(t, { max: 2, maxWaiting: 2, acquireTimeoutMs: 2000 })
  const [reads, writes] = await Promise.all([
    load(40, 2000, () => get(`${base}/feed`)),
    load(4, 2000, (i) => write(base, `during saturation ${i}`))
  ])
  t.comment(`replica route (pool 2, 40 clients): ${describe(reads)}`)
  t.comment(`primary route (4 clients, same time): ${describe(writes)}`)
  const shed = reads.filter((o) => o.status === 503)
  t.ok(shed.length > 0, 'replica requests were shed')
  t.ok(shed.every((o) => o.code === 'FST_PG_SATURATED' || o.code === 'FST_PG_QUEUE_FULL'), 'with coded 503s')
  t.ok(reads.every((o) => o.status === 200 || o.status === 503), 'and nothing but 200 or 503')
  t.ok(reads.filter((o) => o.status === 200).every((o) => o.body.replica === true), 'served by the replica')
  t.ok(writes.length > 0 && writes.every((o) => o.status === 200), 'every primary request answered 200')
  t.equal(app.pg.stats().shed, 0, 'nothing shed for the primary')
  t.ok(app.pg.replica.stats().shed > 0)
})

t.test('the replica stopped: coded 503 on its routes only, at once; the fallback route is served by the primary; back when it is', async (t) => {
  const { app, base } = await build(t, { acquireTimeoutMs: 1500 })
  t.equal((await get(`${base}/feed`)).status, 200, 'the replica serves (a pooled connection)')
  await pair.replica.stop()
  // A pooled connection to it died with the server: it is dropped, not handed out.
  const [reads, fallbacks, writes] = await Promise.all([
    load(8, 1000, () => get(`${base}/feed`)),
    load(4, 1000, () => get(`${base}/feed-or-primary`)),
    load(4, 1000, (i) => write(base, `replica down ${i}`))
  ])
  t.comment(`replica route, replica stopped: ${describe(reads)}`)
  t.comment(`fallback route, replica stopped: ${describe(fallbacks)}`)
  t.comment(`primary route, replica stopped: ${describe(writes)}`)
  t.ok(reads.length > 0 && reads.every((o) => o.status === 503 && o.code === 'FST_PG_UNAVAILABLE'), 'replica route: 503 FST_PG_UNAVAILABLE')
  t.ok(reads.every((o) => o.ms < 1500), 'each within the acquire deadline')
  t.ok(fallbacks.length > 0 && fallbacks.every((o) => o.status === 200 && o.body.replica === false), 'fallback route: 200 from the primary')
  t.ok(writes.length > 0 && writes.every((o) => o.status === 200), 'primary route: 200')
  await pair.replica.start()
  // (start() may have moved it to another port if its own was taken meanwhile.)
  if (new URL(pair.replica.url).port !== new URL(app.pg.replica.pool.options.connectionString ?? '').port) {
    t.comment('the replica came back on another port: the pool cannot follow it; not checked')
    return
  }
  await pair.caughtUp()
  await until(async () => (await get(`${base}/feed`)).status === 200, 'the replica route serves again')
  t.equal((await get(`${base}/feed-or-primary`)).body.replica, true, 'the fallback route is back on the replica')
})

t.test('the replica not answering (blackholed): coded 503 within the acquire deadline; the primary\'s routes answer 200', async (t) => {
  const proxy = await TcpProxy.start(pair.replica.port)
  t.teardown(() => proxy.close())
  const through = new URL(pair.replica.url)
  through.port = String(proxy.port)
  const { base } = await build(t, { connectionString: through.toString(), acquireTimeoutMs: 1000, pingIdleMs: 0, pingTimeoutMs: 300 })
  t.equal((await get(`${base}/feed`)).status, 200)
  proxy.blackhole()
  proxy.retarget(await silentServer(t))
  const [reads, fallbacks, writes] = await Promise.all([
    load(4, 2500, () => get(`${base}/feed`)),
    load(4, 2500, () => get(`${base}/feed-or-primary`)),
    load(4, 2500, (i) => write(base, `blackholed ${i}`))
  ])
  t.comment(`replica route, replica blackholed (acquireTimeoutMs 1000): ${describe(reads)}`)
  t.comment(`fallback route, replica blackholed: ${describe(fallbacks)}`)
  t.comment(`primary route, replica blackholed: ${describe(writes)}`)
  t.ok(fallbacks.length > 0 && fallbacks.every((o) => o.status === 200 && o.body.replica === false), 'fallback route: 200 from the primary')
  // The requests in flight when it stopped answering wait out their deadline (4 clients); after
  // that, one request a second tries the replica again, and the others skip it.
  const slow = fallbacks.filter((o) => o.ms >= 900).length
  t.ok(slow <= 4 + Math.ceil(2500 / 1000), `fallback requests that waited for the replica: ${slow} of ${fallbacks.length}`)
  t.ok(reads.length > 0 && reads.every((o) => o.status === 503 && /^FST_PG_(ACQUIRE_TIMEOUT|QUEUE_FULL|SATURATED|UNAVAILABLE)$/.test(o.code ?? '')), 'replica route: coded 503s')
  t.ok(reads.every((o) => o.ms < 1000 + 500), 'each within the acquire deadline (and some slack)')
  t.ok(writes.length > 0 && writes.every((o) => o.status === 200), 'primary route: 200')
})

t.test('an aborted request that used both databases returns both connections; app.close() closes both', async (t) => {
  const using = deferred()
  const { app, base } = await build(t, { max: 1 }, { max: 1 }, (app) => {
    app.get('/both', async (req) => {
      await req.db.query("insert into posts (title) values ('both')")
      await req.dbs.replica.query('select 1')
      using.resolve()
      await req.dbs.replica.query('select pg_sleep(30)')
      return 'never'
    })
  })
  const sent = send(`${base}/both`)
  await using.promise
  sent.req.destroy()
  await until(() => app.pg.stats().active === 0 && app.pg.replica.stats().active === 0, 'both connections are back')
  t.equal((await write(base, 'after')).status, 200, 'the primary (max 1) serves')
  t.equal((await get(`${base}/feed`)).status, 200, 'the replica (max 1) serves')
  const admin = new pg.Client({ connectionString: pair.replica.url })
  await admin.connect()
  const sleeping = async (): Promise<number> => (await admin.query("select count(*)::int as n from pg_stat_activity where query like '%pg_sleep(30)%' and pid <> pg_backend_pid()")).rows[0].n
  t.equal(await sleeping(), 0, 'the replica statement was cancelled')
  const app2 = Fastify()
  await app2.register(pgPool, { connectionString: pair.primary.url, application_name: 'fpp-close' })
  await app2.register(pgPool, { name: 'replica', connectionString: pair.replica.url, application_name: 'fpp-close' })
  await app2.pg.query('select 1')
  await app2.pg.replica.query('select 1')
  const open = async (): Promise<number> => (await admin.query("select count(*)::int as n from pg_stat_activity where application_name = 'fpp-close'")).rows[0].n
  t.equal(await open(), 1, 'one connection on the replica')
  await app2.close()
  await until(async () => await open() === 0, 'closed on the replica')
  await admin.end()
  t.ok(app2.pg.pool.ended && app2.pg.replica.pool.ended)
})

t.test('the example with REPLICA_URL: the note list is read from the replica, and /metrics shows both databases', async (t) => {
  const { base, stop } = await startExample(t, { DATABASE_URL: pair.primary.url, REPLICA_URL: pair.replica.url })
  const note = await get(`${base}/notes`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title: 'replicated', tags: ['pg'] }) })
  t.equal(note.status, 201)
  await pair.caughtUp()
  const list = await get(`${base}/notes`)
  t.equal(list.status, 200)
  t.ok((list.body as Array<{ title: string }>).some((n) => n.title === 'replicated'), 'the list (read on the replica) has the note')
  const text = await (await fetch(`${base}/metrics`)).text()
  t.match(text, /^pg_pool_acquires_total\{db="default"\} [1-9]\d*$/m, 'the primary in /metrics')
  t.match(text, /^pg_pool_acquires_total\{db="replica"\} [1-9]\d*$/m, 'the replica in /metrics')
  t.match(text, /^pg_pool_hold_seconds_count\{db="replica"\} [1-9]\d*$/m)
  t.notMatch(text, /password|postgres:\/\//, 'no secret in the metrics')
  t.equal(await stop(), 0, 'stops cleanly on Ctrl-C')
})
