/**
 * Behind a real PgBouncer (Debian's package, 1.18) in transaction mode: each transaction may run
 * on another server connection, so session state and named prepared statements do not last.
 * Skipped with a message when pgbouncer is not installed; a failure when CI=true.
 */
import t from 'tap'
import autocannon from 'autocannon'
import pg from 'pg'
import { buildApp } from './helpers/app.js'
import { PgBouncer, pgbouncerOrSkip } from './helpers/pgbouncer.js'
import { setupDatabase } from './helpers/postgres.js'
import { tenants } from './helpers/tenants.js'
import { listen, until } from './helpers/util.js'

const found = pgbouncerOrSkip()
if ('skip' in found) {
  t.comment(found.skip)
  t.plan(0, found.skip)
} else {
  const db = await setupDatabase(t)
  await db.admin('create table orders (id serial primary key, n int not null)')
  await db.admin('create table order_lines (order_id int not null references orders (id), n int not null)')
  // Two server connections for up to 20 client connections: the transaction-mode shuffle.
  const bouncer = await PgBouncer.start(t, found.binary, db, { poolSize: 2 })

  /** Holds one of PgBouncer's two server connections in an open transaction until `end()`. */
  async function occupyServerConnection (): Promise<{ pid: number, end: () => Promise<void> }> {
    const client = new pg.Client({ connectionString: bouncer.url })
    await client.connect()
    await client.query('begin')
    const { rows: [{ pid }] } = await client.query('select pg_backend_pid() as pid')
    return {
      pid,
      end: async () => {
        await client.query('rollback')
        await client.end()
      }
    }
  }

  t.test('1000 transactional requests at concurrency 20: zero errors, every order whole', async (t) => {
    const app = await buildApp(t, { ...db, url: bouncer.url }, { pgbouncer: true, max: 20 })
    let n = 0
    app.post('/orders', { config: { pgPool: { transaction: true } } }, async (req) => {
      const i = n++
      const { rows: [order] } = await req.db.query('insert into orders (n) values ($1) returning id', [i])
      // A nested transaction() is a savepoint inside the route's transaction.
      await req.db.transaction(async (db) => {
        await db.query('insert into order_lines (order_id, n) values ($1, $2), ($1, $3)', [order.id, i, i + 1])
      })
      const { rows: [{ lines }] } = await req.db.query('select count(*)::int as lines from order_lines where order_id = $1', [order.id])
      return { id: order.id, lines }
    })
    const url = await listen(app)
    const result = await autocannon({ url: `${url}/orders`, method: 'POST', connections: 20, amount: 1000 })
    t.equal(result['2xx'], 1000, 'every request succeeded')
    t.equal(result.non2xx, 0)
    t.equal(result.errors, 0)
    const { rows: [{ orders, lines, broken }] } = await db.admin(`
      select (select count(*)::int from orders) as orders,
             (select count(*)::int from order_lines) as lines,
             (select count(*)::int from orders o where (select count(*) from order_lines l where l.order_id = o.id) <> 2) as broken`)
    t.equal(orders, 1000)
    t.equal(lines, 2000)
    t.equal(broken, 0, 'no order without its two lines')
  })

  t.test('named prepared statements: sent unnamed, so they work on any server connection', async (t) => {
    const named = { name: 'order-count', text: 'select count(*)::int as n from orders where n >= $1', values: [0] }

    // The control: without pgbouncer: true, pg prepares the name once per client connection and
    // then skips the Parse; when PgBouncer runs the next transaction on the other server
    // connection, the statement does not exist there.
    const plain = new pg.Client({ connectionString: bouncer.url })
    await plain.connect()
    t.teardown(() => plain.end())
    await plain.query(named)
    const busy = await occupyServerConnection()
    const error = await plain.query(named).then(() => undefined, (error: { code?: string }) => error)
    await busy.end()
    t.equal(error?.code, '26000', 'plain pg: prepared statement does not exist on the other server connection')

    const app = await buildApp(t, { ...db, url: bouncer.url }, { pgbouncer: true, max: 1 })
    app.get('/count', async (req) => (await req.db.query(named)).rows[0])
    app.get('/count-client', async (req) => {
      const client = await req.db.connection()
      return (await client.query(named)).rows[0]
    })
    t.equal((await app.inject('/count')).statusCode, 200)
    const holder = await occupyServerConnection()
    for (const path of ['/count', '/count-client', '/count']) {
      const res = await app.inject(path)
      t.equal(res.statusCode, 200, `${path}: ${res.body}`)
    }
    await holder.end()
    const { rows: [{ n }] } = await app.pg.query(named)
    t.ok(n >= 0, 'fastify.pg.query too')
  })

  t.test('session state outside a transaction is refused with a coded error; inside one it is allowed', async (t) => {
    const app = await buildApp(t, { ...db, url: bouncer.url }, { pgbouncer: true, max: 2 })
    app.get('/set', async (req) => await req.db.query("set search_path = 'elsewhere'"))
    app.get('/tenant', { config: { pgPool: { transaction: true } } }, async (req) => {
      await req.db.query("select set_config('app.tenant_id', $1, true)", ['42'])
      return (await req.db.query("select current_setting('app.tenant_id') as tenant")).rows[0]
    })
    app.get('/client', async (req) => {
      const client = await req.db.connection()
      return await client.query('listen orders')
    })
    for (const path of ['/set', '/client']) {
      const res = await app.inject(path)
      t.equal(res.statusCode, 500)
      t.equal(res.json().code, 'FST_PG_SESSION_STATE', path)
    }
    const res = await app.inject('/tenant')
    t.same(res.json(), { tenant: '42' }, 'set_config(..., true) in the route transaction')
    await t.rejects(app.pg.query('create temp table scratch (x int)'), { code: 'FST_PG_SESSION_STATE' })
  })

  t.test('statement timeout through PgBouncer: plugin-wide, per route, inside transactions, nothing left behind', async (t) => {
    // Why it needs doing: PgBouncer refuses statement_timeout as a connection parameter.
    const direct = new pg.Client({ connectionString: bouncer.url, statement_timeout: 200 })
    direct.on('error', () => {})
    await t.rejects(direct.connect(), /unsupported startup parameter/i, 'pg\'s statement_timeout is refused by PgBouncer')

    const app = await buildApp(t, { ...db, url: bouncer.url }, { pgbouncer: true, max: 4, statementTimeoutMs: 200 })
    app.get('/sleep', async (req) => await req.db.query('select pg_sleep($1)', [(req.query as { s: string }).s]))
    app.get('/sleep-text', async () => await app.pg.query('select pg_sleep(1)'))
    app.get('/sleep-tx', { config: { pgPool: { transaction: true } } }, async (req) => {
      await req.db.query('select 1')
      return await req.db.query('select pg_sleep(1)')
    })
    app.get('/slow-route', { config: { pgPool: { statementTimeoutMs: 1500 } } }, async (req) => {
      await req.db.query('select pg_sleep(0.4)')
      return (await req.db.query("select current_setting('statement_timeout') as v")).rows[0]
    })
    for (const path of ['/sleep?s=1', '/sleep-text', '/sleep-tx']) {
      const started = Date.now()
      const res = await app.inject(path)
      const ms = Date.now() - started
      t.equal(res.json().code, '57014', `${path}: cancelled by the server`)
      t.ok(ms >= 190 && ms < 900, `${path}: after about 200 ms (${ms} ms)`)
    }
    t.equal((await app.inject('/sleep?s=0.05')).statusCode, 200, 'a fast statement passes')
    t.same((await app.inject('/slow-route')).json(), { v: '1500ms' }, "the route's own timeout")
    // Nothing stays on the server connections: a plain client through PgBouncer sees the default.
    const plain = new pg.Client({ connectionString: bouncer.url })
    await plain.connect()
    for (let i = 0; i < 4; i++) {
      t.equal((await plain.query('show statement_timeout')).rows[0].statement_timeout, '0')
    }
    await plain.end()
  })

  t.test('row-level security through PgBouncer: each statement its tenant\'s, on 2 server connections, nothing left on them', async (t) => {
    const tn = await tenants(db, { tenants: 20, rowsEach: 2 })
    // PgBouncer logging in as the app's role, which owns nothing: the policy binds it.
    const rls = await PgBouncer.start(t, found.binary, { ...db, url: tn.url }, { poolSize: 2 })
    const app = await buildApp(t, { ...db, url: rls.url }, { pgbouncer: true, max: 10, maxWaiting: Infinity, identity: tn.fromHeader })
    const insert = "insert into notes (tenant_id, body) values (nullif(current_setting('app.tenant_id', true), '')::int, $1) returning tenant_id"
    app.get('/read', async (req) => (await req.db.query('select tenant_id from notes')).rows.map((r) => r.tenant_id))
    app.get('/write', { config: { pgPool: { transaction: true } } }, async (req) => [
      ...(await req.db.query(insert, [`asked ${String(req.headers['x-tenant'])}`])).rows.map((r) => r.tenant_id),
      ...(await req.db.query('select tenant_id from notes where id > $1', [0])).rows.map((r) => r.tenant_id)
    ])
    app.get('/client', async (req) => {
      const client = await req.db.connection()
      return (await client.query('select tenant_id from notes where id > $1', [0])).rows.map((r) => r.tenant_id)
    })
    const problems: string[] = []
    let next = 0
    await Promise.all(Array.from({ length: 20 }, async () => {
      while (next < 1000) {
        const i = next++
        const tenant = i % 10 === 0 ? undefined : 1 + i % 20
        const path = ['/read', '/write', '/client'][i % 3] as string
        const res = await app.inject({ url: path, headers: tenant === undefined ? {} : { 'x-tenant': String(tenant) } })
        if (tenant === undefined && path === '/write') {
          if (res.json().code !== '42501') problems.push(`${path} without an identity: ${res.body}`)
          continue
        }
        if (res.statusCode !== 200) problems.push(`${path} as ${String(tenant)}: ${res.statusCode} ${res.body}`)
        else if ((res.json() as number[]).some((seen) => seen !== tenant)) problems.push(`${path} as ${String(tenant)} saw ${res.body}`)
      }
    }))
    t.same(problems, [], 'every statement saw its tenant\'s rows only; without an identity, none')
    const { rows } = await db.admin<{ tenant_id: number, body: string }>("select tenant_id, body from notes where body like 'asked %'")
    t.ok(rows.length > 0)
    t.same(rows.filter((row) => row.body !== `asked ${row.tenant_id}`), [], 'every row written under the tenant that asked')
    // Both server connections, straight after (each held by a transaction of its own): neither role nor setting.
    const plain = [new pg.Client({ connectionString: rls.url }), new pg.Client({ connectionString: rls.url })]
    const sessions = await Promise.all(plain.map(async (client) => {
      await client.connect()
      await client.query('begin')
      const { rows: [row] } = await client.query("select pg_backend_pid() as pid, current_user as user, coalesce(current_setting('app.tenant_id', true), '') as s")
      return row
    }))
    t.equal(new Set(sessions.map((row) => row.pid)).size, 2, 'both server connections')
    t.same(sessions.map(({ user, s }) => ({ user, s })), [{ user: tn.login, s: '' }, { user: tn.login, s: '' }], 'neither holds a role or a setting')
    await Promise.all(plain.map((client) => client.end()))
  })

  t.test('PgBouncer KILL, then RESUME: coded 503s during, recovery after', async (t) => {
    const app = await buildApp(t, { ...db, url: bouncer.url }, { pgbouncer: true, max: 4, acquireTimeoutMs: 300, pingIdleMs: 0 })
    app.get('/n', async (req) => (await req.db.query('select count(*)::int as n from orders')).rows[0])
    for (let i = 0; i < 4; i++) t.equal((await app.inject('/n')).statusCode, 200)
    await bouncer.admin(`kill ${bouncer.database}`)
    t.teardown(() => bouncer.admin(`resume ${bouncer.database}`).catch(() => {}))
    const during = await Promise.all(Array.from({ length: 6 }, () => app.inject('/n')))
    for (const res of during) {
      t.equal(res.statusCode, 503, 'while killed: 503')
      t.match(res.json().code, /^FST_PG_(ACQUIRE_TIMEOUT|UNAVAILABLE)$/)
      t.ok(Number(res.headers['retry-after']) >= 1, 'with Retry-After')
    }
    await bouncer.admin(`resume ${bouncer.database}`)
    // PgBouncer retries its server login after server_login_retry (1 s in the test config).
    await until(async () => (await app.inject('/n')).statusCode === 200, 'the app serves again', 5000)
    // A full batch (4 connections, and 8 may wait: max + maxWaiting at once) is served without a
    // restart. (Tried again while the pool reopens its connections: on a loaded machine one
    // opened through PgBouncer can take longer than this test's 300 ms deadline.)
    let statuses: number[] = []
    await until(async () => {
      statuses = (await Promise.all(Array.from({ length: 12 }, () => app.inject('/n')))).map((res) => res.statusCode)
      return statuses.every((status) => status === 200)
    }, 'a full batch is served', 10_000)
    t.same(statuses, Array(12).fill(200), 'after RESUME: every request of a batch served')
  })
}
