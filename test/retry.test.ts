/**
 * Opt-in retry: a statement marked `retry: true` is sent once more on a fresh connection after
 * a connection-class error; never inside a transaction, never for other errors.
 */
import t from 'tap'
import type { RequestDb } from '../src/index.js'
import { buildApp } from './helpers/app.js'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create sequence calls')

async function killBackend (pid: number): Promise<void> {
  await db.admin('select pg_terminate_backend($1)', [pid])
  await until(async () => (await db.admin('select 1 from pg_stat_activity where pid = $1', [pid])).rowCount === 0, 'the backend is gone')
}

const pidSql = 'select pg_backend_pid() as pid'

/** Kills the request's backend and waits until pg has read it (so the next statement is never written). */
async function killRequestBackend (req: { db: RequestDb }): Promise<void> {
  const client = await req.db.connection()
  const heard = new Promise((resolve) => client.once('end', resolve))
  await killBackend((await req.db.query(pidSql)).rows[0].pid)
  await heard
}

t.test('request.db: a retry statement survives its connection dying', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    const first = (await req.db.query(pidSql)).rows[0].pid
    await killBackend(first)
    const second = (await req.db.query({ text: pidSql, retry: true })).rows[0].pid
    const third = (await req.db.query(pidSql)).rows[0].pid
    return { first, second, third }
  })
  const res = await app.inject('/')
  t.equal(res.statusCode, 200)
  const { first, second, third } = res.json()
  t.not(second, first, 'retried on a fresh connection')
  t.equal(third, second, 'the request keeps the new connection')
  t.equal(app.pg.stats().total, 1)
})

t.test('request.db: once its transaction() has ended, a retry statement is retried again', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    const first = await req.db.transaction(async (tx) => (await tx.query(pidSql)).rows[0].pid)
    await killBackend(first)
    const second = (await req.db.query({ text: pidSql, retry: true })).rows[0].pid
    return { first, second }
  })
  const res = await app.inject('/')
  t.equal(res.statusCode, 200)
  const { first, second } = res.json()
  t.not(second, first, 'retried on a fresh connection: nothing of the transaction was left to lose')
})

t.test('request.db: without retry, the statement fails', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    await killRequestBackend(req)
    return (await req.db.query(pidSql)).rows
  })
  // pg had already read the termination: the statement was never written, so 503, safe to retry.
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_PG_CONNECTION_LOST')
  t.ok(res.headers['retry-after'])
})

t.test('request.db: never retried inside a transaction', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    await req.db.query('begin')
    await killRequestBackend(req)
    return (await req.db.query({ text: pidSql, retry: true })).rows
  })
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_PG_CONNECTION_LOST', 'not retried: the lost connection is the answer')
})

t.test('never retried for an error that is not connection-class', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => (await req.db.query({ text: "select nextval('calls') / 0", retry: true })).rows)
  t.equal((await app.inject('/')).statusCode, 500)
  await t.rejects(app.pg.query({ text: "select nextval('calls') / 0", retry: true }), { code: '22012' })
  const { rows } = await db.admin('select last_value::int as n from calls')
  t.equal(rows[0].n, 2, 'each statement ran once')
})

t.test('fastify.pg.query: retry on a fresh connection', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, max: 1, pingIdleMs: false })
  const first = (await app.pg.query(pidSql)).rows[0].pid
  proxy.forget() // the next packet on the pooled connection is answered with a RST
  const { rows } = await app.pg.query({ text: pidSql, retry: true })
  t.not(rows[0].pid, first)
  proxy.forget()
  const error = await app.pg.query(pidSql).catch((e: unknown) => e) as Error & { cause?: { code?: string }, statusCode?: number }
  t.match(error, { code: 'FST_PG_CONNECTION_LOST', statusCode: 500, cause: { code: 'ECONNRESET' } }, 'without retry the reset reaches the caller, coded')
})

t.test('request.db: retry after connection() was used hands out a new client next time', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    const before = await req.db.connection()
    const first = (await before.query(pidSql)).rows[0].pid
    await killBackend(first)
    const second = (await req.db.query({ text: pidSql, retry: true })).rows[0].pid
    const after = await req.db.connection()
    const third = (await after.query(pidSql)).rows[0].pid
    return { first, second, third, same: before === after }
  })
  const res = await app.inject('/')
  t.equal(res.statusCode, 200)
  t.match(res.json(), { same: false })
  t.equal(res.json().second, res.json().third)
})
