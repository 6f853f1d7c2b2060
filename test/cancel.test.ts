/**
 * Every statement ends with its request: a statement still running when its request ends is
 * cancelled (PostgreSQL's CancelRequest), its connection kept when it stops within
 * `cancelGraceMs`, destroyed when nothing answers (a blackholed socket); with a statement
 * timeout, pg gives up on a silent socket at the timeout plus the grace. COPY and streams keep
 * their connection when they succeed; a client its user ended never goes back to the pool.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { from as copyFrom, to as copyTo } from 'pg-copy-streams'
import t from 'tap'
import { appBackends, buildApp } from './helpers/app.js'
import { closedPort, proxied, silentServer } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { listen, send, until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table imported (n int)')

const pid = 'select pg_backend_pid() as pid'

/** Messages of the cancel diagnostics channel while the test runs. */
function listenCancel (t: { teardown (fn: () => void): void }): Array<{ settled: boolean }> {
  const seen: Array<{ settled: boolean }> = []
  const fn = (message: unknown): void => { seen.push(message as { settled: boolean }) }
  subscribe('fastify-pg-pool:cancel', fn)
  t.teardown(() => unsubscribe('fastify-pg-pool:cancel', fn))
  return seen
}

/** Waits until the app's backend runs `text` (so the statement is on the server, not in flight). */
async function running (text: string): Promise<void> {
  await until(async () => {
    const { rows } = await db.admin("select 1 from pg_stat_activity where application_name = 'fpp-app' and state = 'active' and query = $1", [text])
    return rows.length > 0
  }, `the server runs ${text}`)
}

/** ms from now until `GET path` answers 200 (a request waits for the pool's only connection). */
async function servedAfter (url: string, path: string): Promise<{ ms: number, body: string }> {
  const start = performance.now()
  const res = await send(`${url}${path}`).done
  if (res instanceof Error || res.status !== 200) throw new Error(`not served: ${res instanceof Error ? res.message : res.body}`)
  return { ms: performance.now() - start, body: res.body }
}

t.test('abort mid-statement: cancelled at once; the backend idle and the next request served within 1 s', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/sleep', async (req) => (await req.db.query('select pg_sleep(10)')).rows)
  app.get('/pid', async (req) => (await req.db.query(pid)).rows[0].pid)
  const url = await listen(app)
  const before = (await servedAfter(url, '/pid')).body
  const sent = send(`${url}/sleep`)
  await running('select pg_sleep(10)')
  await new Promise((resolve) => setTimeout(resolve, 150))
  sent.req.destroy()
  const next = await servedAfter(url, '/pid')
  t.comment(`abort after 150 ms of pg_sleep(10), max 1: next request served ${Math.round(next.ms)} ms after the abort`)
  t.ok(next.ms < 1000, `served within 1 s (${Math.round(next.ms)} ms)`)
  t.equal(next.body, before, 'on the same backend: the cancel settled, the connection was kept')
  t.same((await appBackends(db)).map((b) => b.state), ['idle'], 'nothing runs on the server')
  t.match(app.pg.stats(), { cancels: 1, cancelsSettled: 1, destroyed: { stuck: 0 } })
})

t.test('blackholed mid-statement: the connection is destroyed after cancelGraceMs, the next request served on a new one', async (t) => {
  const { proxy, url: through } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: through, max: 1, cancelGraceMs: 300, pingIdleMs: false })
  app.get('/sleep', async (req) => (await req.db.query('select pg_sleep(3)')).rows)
  app.get('/pid', async (req) => (await req.db.query(pid)).rows[0].pid)
  const url = await listen(app)
  const sent = send(`${url}/sleep`)
  await running('select pg_sleep(3)')
  proxy.blackhole()
  sent.req.destroy()
  const next = await servedAfter(url, '/pid')
  t.comment(`blackhole mid-query, cancelGraceMs 300, max 1: next request served ${Math.round(next.ms)} ms after the abort`)
  t.ok(next.ms >= 250 && next.ms < 300 + 1500, `after the grace, plus a connect (${Math.round(next.ms)} ms)`)
  t.match(app.pg.stats(), { cancels: 1, cancelsSettled: 0, destroyed: { stuck: 1 } })
  // The cancel itself reached the server over a connection of its own.
  await until(async () => (await appBackends(db)).every((b) => b.state !== 'active'), 'the stuck statement was cancelled on the server')
})

t.test('statementTimeoutMs on a blackholed socket: the request itself answers at the timeout plus the grace', async (t) => {
  const { proxy, url: through } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: through, max: 1, statementTimeoutMs: 500, cancelGraceMs: 300, pingIdleMs: false })
  let after: unknown
  app.get('/sleep', async (req) => {
    try {
      return (await req.db.query('select pg_sleep(5)')).rows
    } catch (error) {
      // What the request sends next would wait behind the statement pg gave up on: not sent.
      after = await req.db.query('select 1').catch((e: unknown) => e)
      throw error
    }
  })
  app.get('/pid', async (req) => (await req.db.query(pid)).rows[0].pid)
  const url = await listen(app)
  const start = performance.now()
  const sent = send(`${url}/sleep`)
  await running('select pg_sleep(5)')
  proxy.blackhole()
  const res = await sent.done
  const ms = performance.now() - start
  t.comment(`statementTimeoutMs 500 + cancelGraceMs 300, blackholed: answered in ${Math.round(ms)} ms`)
  t.notOk(res instanceof Error)
  t.match(res, { status: 500 })
  t.match(JSON.parse((res as { body: string }).body), { code: 'FST_PG_CONNECTION_LOST' })
  t.ok(ms >= 750 && ms < 2500, `about 800 ms (${Math.round(ms)} ms)`)
  t.match(after, { code: 'FST_PG_CONNECTION_LOST', statusCode: 503 }, 'a later statement of the request is refused unsent')
  t.ok((await servedAfter(url, '/pid')).ms < 1500, 'the next request is served on a new connection')
})

for (const [name, place] of [['refuses the connection', 'refused'], ['closes it unread', 'closed'], ['never answers it', 'silent']] as const) {
  t.test(`the server ${name} for the cancel: the connection is destroyed after the grace`, async (t) => {
    const { proxy, url: through } = await proxied(t, db)
    const app = await buildApp(t, db, { connectionString: through, max: 1, cancelGraceMs: 300, pingIdleMs: false })
    // (Its own text: the other case's statement may still sleep on the server, never cancelled.)
    const sleep = `select pg_sleep(2) -- ${place}`
    app.get('/sleep', async (req) => (await req.db.query(sleep)).rows)
    const url = await listen(app)
    const sent = send(`${url}/sleep`)
    await running(sleep)
    // A failover: the connection goes silent, and the address it came from is gone, or hangs.
    proxy.blackhole()
    if (place === 'refused') proxy.stopListening()
    else proxy.retarget(place === 'closed' ? await closedPort() : await silentServer(t))
    const cancel = listenCancel(t)
    sent.req.destroy()
    await until(() => app.pg.stats().destroyed.stuck === 1, 'the connection is destroyed')
    t.match(app.pg.stats(), { cancels: 1, cancelsSettled: 0 })
    t.match(cancel, [{ settled: false }])
  })
}

t.test('a route timeout carries its own client-side bound, past the plugin-wide one', async (t) => {
  const app = await buildApp(t, db, { max: 1, statementTimeoutMs: 200, cancelGraceMs: 100 })
  app.get('/long', { config: { pgPool: { statementTimeoutMs: 2000 } } }, async (req) => (await req.db.query('select pg_sleep(0.6) as slept')).rows)
  app.get('/none', { config: { pgPool: { statementTimeoutMs: false } } }, async (req) => {
    await req.db.query('begin')
    await req.db.query('select 1')
    return (await req.db.query('select pg_sleep(0.6) as slept')).rows
  })
  t.equal((await app.inject('/long')).statusCode, 200, 'not cut at the plugin-wide 300 ms')
  t.equal((await app.inject('/none')).statusCode, 200, 'no bound at all, inside a transaction too')
})

t.test('COPY TO aborted mid-download: the next request within 1 s', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/export', async (req, reply) => {
    const client = await req.db.connection()
    return await reply.type('text/plain').send(client.query(copyTo('copy (select generate_series(1, 2000000)) to stdout')))
  })
  app.get('/pid', async (req) => (await req.db.query(pid)).rows[0].pid)
  const url = await listen(app)
  const sent = send(`${url}/export`)
  const response = await sent.headers
  await new Promise((resolve) => response.once('data', resolve))
  sent.req.destroy()
  const next = await servedAfter(url, '/pid')
  t.comment(`aborted COPY TO of 2 million rows, max 1: next request served ${Math.round(next.ms)} ms after the abort`)
  t.ok(next.ms < 1000, `within 1 s (${Math.round(next.ms)} ms)`)
})

t.test('COPY FROM that succeeds keeps its connection (request.db.connection() and pool.connect())', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.post('/import', async (req) => {
    const client = await req.db.connection()
    await pipeline(Readable.from(['1\n', '2\n', '3\n']), client.query(copyFrom('copy imported from stdin')))
    return (await req.db.query(pid)).rows[0].pid
  })
  const first = await app.inject({ method: 'POST', url: '/import' })
  t.equal(first.statusCode, 200)
  const { rows } = await app.pg.query(pid)
  t.equal(String(rows[0].pid), first.body, 'the same backend serves the next checkout')
  const client = await app.pg.pool.connect()
  await pipeline(Readable.from(['4\n']), client.query(copyFrom('copy imported from stdin')))
  client.release()
  t.equal((await app.pg.query(pid)).rows[0].pid, rows[0].pid, 'and after a pool.connect() client')
  t.match(app.pg.stats(), { created: 1, destroyed: { error: 0 } })
  t.same((await db.admin('select count(*)::int as n from imported')).rows, [{ n: 4 }])
})

t.test('a client its user ended never goes back to the pool', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/end', async (req) => {
    const client = await req.db.connection()
    await client.end()
    return 'ended'
  })
  app.get('/pid', async (req) => (await req.db.query(pid)).rows[0].pid)
  t.equal((await app.inject('/end')).statusCode, 200)
  t.equal((await app.inject('/pid')).statusCode, 200, 'the next request gets a working connection')
  const client = await app.pg.pool.connect()
  const ending = client.end()
  client.release()
  await ending
  t.equal((await app.pg.query('select 1 as n')).rows[0].n, 1, 'and after a pool.connect() client')
  t.equal(app.pg.stats().destroyed.error, 2)
})
