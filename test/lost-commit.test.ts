/**
 * A lost COMMIT says so: when the connection is cut after COMMIT reached the server and before
 * its answer came back, the transaction may have committed (here it always did). The caller
 * gets FST_PG_COMMIT_UNKNOWN (500), never a generic connection error or a 503 that invites a
 * retry; a warn line names the route. A COMMIT that was never sent is a plain 503.
 */
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import pgPool from '../src/index.js'
import { assertReturned } from './helpers/app.js'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { logLines, until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table ledger (note text)')
t.beforeEach(async () => { await db.admin('truncate ledger') })

const COMMIT = /^\s*(?:\/\*.*?\*\/\s*)?(?:commit|end)\b/i
const notes = async (): Promise<string[]> => (await db.admin('select note from ledger order by note')).rows.map((r) => r.note)
const code = (error: unknown): unknown => (error as { code?: unknown }).code

async function lossyApp (t: Test) {
  const { proxy, url } = await proxied(t, db)
  const { stream, lines } = logLines()
  const app = Fastify({ logger: { level: 'warn', stream } })
  await app.register(pgPool, { connectionString: url, application_name: 'fpp-app' })
  t.teardown(() => app.close())
  // The COMMIT reaches the server, runs, and its answer never comes back.
  proxy.cutAfter(COMMIT, { at: 'reply' })
  const warned = (route: string): boolean => lines.some((l) => l.level === 40 && /after COMMIT was sent/.test(l.msg) && l.route === route)
  return { app, warned }
}

t.test('route transaction: FST_PG_COMMIT_UNKNOWN, and the row did commit', async (t) => {
  const { app, warned } = await lossyApp(t)
  app.post('/orders', { config: { pgPool: { transaction: true } } }, async (req) => {
    await req.db.query("insert into ledger values ('route')")
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/orders' })
  t.equal(res.statusCode, 500, '500, not a 502/503 that a client or proxy would retry')
  t.equal(res.json().code, 'FST_PG_COMMIT_UNKNOWN')
  t.match(res.json().message, /may or may not have committed/)
  t.notOk(res.headers['retry-after'])
  t.same(await notes(), ['route'], 'the outcome the error warned of: it had committed')
  t.ok(warned('/orders'), 'a warn line with the route')
  await assertReturned(t, app, db)
})

t.test('transaction(), a plain COMMIT, and a connection() client: the same', async (t) => {
  const { app, warned } = await lossyApp(t)
  app.post('/tx', async (req) => await req.db.transaction(async (tx) => { await tx.query("insert into ledger values ('tx')") }).catch(code))
  app.post('/plain', async (req) => {
    await req.db.query('begin')
    await req.db.query("insert into ledger values ('plain')")
    return await req.db.query('COMMIT').catch(code)
  })
  app.post('/client', async (req) => {
    const client = await req.db.connection()
    await client.query('begin')
    await client.query("insert into ledger values ('client')")
    return await client.query('/* orm */ commit').catch(code)
  })
  app.post('/callback', async (req) => {
    const client = await req.db.connection()
    await client.query('begin')
    await client.query("insert into ledger values ('callback')")
    return await new Promise((resolve) => client.query('end', (error: unknown) => resolve(code(error))))
  })
  for (const url of ['/tx', '/plain', '/client', '/callback']) {
    t.equal((await app.inject({ method: 'POST', url })).body, 'FST_PG_COMMIT_UNKNOWN', url)
    t.ok(warned(url), `${url}: a warn line`)
  }
  await until(async () => (await notes()).length === 4, 'every COMMIT ran on the server')
  t.same(await notes(), ['callback', 'client', 'plain', 'tx'])
  await assertReturned(t, app, db)
})

t.test('a COMMIT never sent (the connection died first): 503 FST_PG_CONNECTION_LOST, nothing committed', async (t) => {
  const { app } = await lossyApp(t)
  app.post('/', { config: { pgPool: { transaction: true } } }, async (req) => {
    await req.db.query("insert into ledger values ('lost')")
    const { rows: [{ pid }] } = await req.db.query('select pg_backend_pid() as pid')
    const client = await req.db.connection()
    const ended = new Promise((resolve) => client.once('end', resolve))
    await db.admin('select pg_terminate_backend($1)', [pid])
    await ended // pg has read the termination: the COMMIT will not be written
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_PG_CONNECTION_LOST')
  t.ok(res.headers['retry-after'], 'safe to retry: nothing ran')
  t.same(await notes(), [])
})

t.test('a pool.connect() client: a lost COMMIT is FST_PG_COMMIT_UNKNOWN (promise and callback); a statement after the loss, 503 not sent', async (t) => {
  const { app } = await lossyApp(t)
  const client = await app.pg.pool.connect()
  await client.query('begin')
  await client.query("insert into ledger values ('job')")
  await t.rejects(client.query('commit'), { code: 'FST_PG_COMMIT_UNKNOWN' })
  await t.rejects(client.query('select 1'), { code: 'FST_PG_CONNECTION_LOST', statusCode: 503 }, 'pg refused it unsent: safe to retry')
  const viaCallback = await new Promise((resolve) => client.query('select 1', (error: unknown) => resolve(error)))
  t.match(viaCallback, { code: 'FST_PG_CONNECTION_LOST', statusCode: 503 })
  await t.rejects(client.query('select nope'), { code: 'FST_PG_CONNECTION_LOST' })
  client.release()
  t.same(await notes(), ['job'])

  const fresh = await app.pg.pool.connect()
  const serverError = await new Promise((resolve) => fresh.query('select nope', (error: unknown) => resolve(error)))
  t.match(serverError, { code: '42703' }, "a server's error reaches the callback as it is")
  fresh.release()
})
