/**
 * What `pgbouncer: true` changes, observed directly on PostgreSQL (so it is checked on every
 * machine; the same behaviour through a real PgBouncer is in pgbouncer.test.ts).
 */
import t from 'tap'
import { assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'

const db = await setupDatabase(t)

t.test('named statements are sent unnamed: nothing is prepared on the server', async (t) => {
  const app = await buildApp(t, db, { pgbouncer: true, max: 1 })
  const named = { name: 'unnamed-please', text: 'select $1::int * 2 as n', values: [21] }
  app.get('/', async (req) => {
    const client = await req.db.connection()
    return {
      db: (await req.db.query(named)).rows[0].n,
      client: (await client.query(named)).rows[0].n,
      prepared: (await req.db.query('select count(*)::int as n from pg_prepared_statements')).rows[0].n
    }
  })
  t.same((await app.inject('/')).json(), { db: 42, client: 42, prepared: 0 })
  t.same((await app.pg.query(named)).rows, [{ n: 42 }])
})

t.test('session state outside a transaction: FST_PG_SESSION_STATE, in every way of querying', async (t) => {
  const app = await buildApp(t, db, { pgbouncer: true, max: 1 })
  app.get('/', async (req) => {
    const client = await req.db.connection()
    const viaCallback = await new Promise((resolve) => client.query('set role postgres', (error: Error & { code?: string }) => resolve(error?.code)))
    return {
      db: await req.db.query('set search_path = public').catch((e: { code: string }) => e.code),
      client: await client.query('listen x').catch((e: { code: string }) => e.code),
      viaCallback,
      inTx: await req.db.transaction(async (tx) => (await tx.query("select set_config('app.x', '1', true) as v")).rows[0].v)
    }
  })
  t.same((await app.inject('/')).json(), { db: 'FST_PG_SESSION_STATE', client: 'FST_PG_SESSION_STATE', viaCallback: 'FST_PG_SESSION_STATE', inTx: '1' })
  await t.rejects(app.pg.query('select pg_advisory_lock(1)'), { code: 'FST_PG_SESSION_STATE' })
  const client = await app.pg.pool.connect()
  await t.rejects(client.query('create temp table x (y int)'), { code: 'FST_PG_SESSION_STATE' })
  client.release()
  await assertReturned(t, app, db)
})

t.test('the statement timeout travels with each statement, not as a connection parameter', async (t) => {
  const app = await buildApp(t, db, { pgbouncer: true, max: 1, statementTimeoutMs: 150 })
  app.get('/', async (req) => ({
    sleep: await req.db.query('select pg_sleep(1)').catch((e: { code: string }) => e.code),
    // A session-level read after the statement: nothing was set on the session.
    session: (await req.db.query('select 1').then(() => req.db.query("select current_setting('statement_timeout') as v"))).rows[0].v
  }))
  app.get('/off', { config: { pgPool: { statementTimeoutMs: 0 } } }, async (req) => (await req.db.query('select pg_sleep(0.2) is null as slept')).rows[0])
  const res = (await app.inject('/')).json()
  t.equal(res.sleep, '57014')
  t.equal(res.session, '150ms', 'seen from inside its own statement')
  t.same((await app.inject('/off')).json(), { slept: false }, 'a route can turn it off')
  await t.rejects(app.pg.query('select pg_sleep(1)'), { code: '57014' }, 'fastify.pg.query too')
  t.same((await app.pg.query('begin')).command, 'BEGIN', 'transaction control is never prefixed')
  const client = await app.pg.pool.connect()
  t.same((await client.query('show statement_timeout')).rows, [{ statement_timeout: '0' }], 'no connection parameter')
  client.release()
  await assertReturned(t, app, db)
})

t.test('a value that fails to serialise does not let a session SET slip out after COMMIT', async (t) => {
  const app = await buildApp(t, db, { pgbouncer: true, max: 1 })
  const bad = { toPostgres: () => { throw new Error('cannot serialise') } }
  app.get('/', async (req) => {
    await req.db.query('begin')
    const results = await Promise.allSettled([
      req.db.query('select $1::text', [bad]),
      req.db.query('commit'),
      req.db.query('set search_path = leaked')
    ])
    return results.map((r) => r.status === 'fulfilled' ? r.value.command : (r.reason as { code?: string, message: string }).code ?? (r.reason as Error).message)
  })
  t.same((await app.inject('/')).json(), ['cannot serialise', 'COMMIT', 'FST_PG_SESSION_STATE'])
})
