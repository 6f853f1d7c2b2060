/**
 * `config: { pgPool: { transaction } }`: the whole handler in one transaction, committed before
 * a 2xx/3xx reply is sent and rolled back otherwise, on every path.
 */
import Fastify from 'fastify'
import t from 'tap'
import pgPool from '../src/index.js'
import { assertReturned, buildApp } from './helpers/app.js'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, listen, send, until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table ledger (note text not null)')
await db.admin(`create table parent (id int primary key);
  create table child (parent_id int references parent (id) deferrable initially deferred)`)
t.beforeEach(async () => { await db.admin('truncate ledger, child, parent') })

const notes = async (): Promise<string[]> => (await db.admin('select note from ledger order by note')).rows.map((r) => r.note)
const tx = { config: { pgPool: { transaction: true } } }

t.test('a 2xx reply commits, before it is sent', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req) => {
    await req.db.query("insert into ledger values ('a')")
    await req.db.query("insert into ledger values ('b')")
    // Not visible from outside yet: the transaction is still open.
    return { outside: (await db.admin('select count(*)::int as n from ledger')).rows[0].n }
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { outside: 0 })
  t.same(await notes(), ['a', 'b'])
  await assertReturned(t, app, db)
})

t.test('a 3xx reply commits', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req, reply) => {
    await req.db.query("insert into ledger values ('moved')")
    return reply.redirect('/elsewhere', 303)
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 303)
  t.same(await notes(), ['moved'])
})

t.test('a throw rolls back: 500, nothing committed', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req) => {
    await req.db.query("insert into ledger values ('lost')")
    throw new Error('boom')
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 500)
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('a 4xx reply rolls back', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req, reply) => {
    await req.db.query("insert into ledger values ('lost')")
    return reply.code(409).send({ conflict: true })
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 409)
  t.same(await notes(), [])
})

t.test('a client abort mid-handler rolls back', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const inserted = deferred()
  const release = deferred()
  app.post('/', tx, async (req) => {
    await req.db.query("insert into ledger values ('lost')")
    inserted.resolve()
    await release.promise
    return 'too late'
  })
  const url = await listen(app)
  const sent = send(url, { method: 'POST', body: {} })
  await inserted.promise
  sent.req.destroy()
  await sent.done
  await until(() => app.pg.stats().active === 0, 'the connection is back')
  release.resolve()
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('a hijacked reply rolls back (no onSend): commit yourself with transaction()', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.post('/', tx, async (req, reply) => {
    await req.db.query("insert into ledger values ('lost')")
    reply.hijack()
    reply.raw.end('done')
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).body, 'done')
  await assertReturned(t, app, db)
  t.same(await notes(), [])
})

t.test('a failed statement the handler swallowed: FST_PG_TRANSACTION_ABORTED, nothing committed', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req) => {
    await req.db.query("insert into ledger values ('lost')")
    await req.db.query('select 1 / 0').catch(() => 'ignored')
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_PG_TRANSACTION_ABORTED')
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('a COMMIT that fails (a deferred constraint) turns the reply into the error', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req) => {
    await req.db.query("insert into ledger values ('lost')")
    await req.db.query('insert into child values (1)') // no parent 1: checked at COMMIT
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, '23503', 'foreign_key_violation, from the COMMIT')
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('transaction() inside makes a savepoint; connection() is inside the transaction too', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req) => {
    await req.db.query("insert into ledger values ('outer')")
    await req.db.transaction(async (inner) => {
      await inner.query("insert into ledger values ('inner lost')")
      throw new Error('inner fails')
    }).catch(() => 'recovered')
    await req.db.transaction(async (inner) => { await inner.query("insert into ledger values ('inner kept')") })
    const client = await req.db.connection()
    return { status: client.getTransactionStatus() }
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { status: 'T' })
  t.same(await notes(), ['inner kept', 'outer'])
})

t.test('connection() first: the transaction begins before the client is handed over', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req) => {
    const client = await req.db.connection()
    await client.query("insert into ledger values ('via client')")
    return { status: client.getTransactionStatus() }
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { status: 'T' })
  t.same(await notes(), ['via client'])
})

t.test('begin options: isolation level, read only', async (t) => {
  const app = await buildApp(t, db)
  app.get('/iso', { config: { pgPool: { transaction: { isolationLevel: 'serializable', readOnly: true } } } }, async (req) => {
    const { rows: [row] } = await req.db.query("select current_setting('transaction_isolation') as iso, current_setting('transaction_read_only') as ro")
    return row
  })
  t.same((await app.inject('/iso')).json(), { iso: 'serializable', ro: 'on' })
})

t.test('a transactional route that never queries takes no connection', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', tx, async () => 'no database')
  app.get('/throws', tx, async () => { throw new Error('no database either') })
  t.equal((await app.inject('/')).body, 'no database')
  t.equal((await app.inject('/throws')).statusCode, 500)
  t.equal(app.pg.stats().total, 0)
})

t.test('the route\'s own onSend hooks run first and may still change the status', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', {
    ...tx,
    onSend: async (_req, reply, payload) => {
      reply.code(422)
      return payload
    }
  }, async (req) => {
    await req.db.query("insert into ledger values ('lost')")
    return { ok: true }
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 422)
  t.same(await notes(), [])
})

t.test('invalid route config fails when the route is added, with a coded error', async (t) => {
  const app = await buildApp(t, db)
  t.throws(() => app.get('/a', { config: { pgPool: { transaction: 'yes' as never } } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message: /config\.pgPool\.transaction.*GET \/a/ })
  t.throws(() => app.get('/b', { config: { pgPool: { transaction: { isolationLevel: 'chaos' as never } } } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION' })
  t.throws(() => app.get('/c', { config: { pgPool: { transaction: { readOnly: 'yes' as never } } } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message: /readOnly/ })
  t.throws(() => app.get('/d', { config: { pgPool: { shedding: 'no' as never } } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message: /shedding/ })
  t.throws(() => app.get('/e', { config: { pgPool: 'on' as never } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool`/ })
  t.throws(() => app.get('/e1', { config: { pgPool: { transaction: (() => true) as never } } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message: /got a function/ })
  t.throws(() => app.get('/e2', { config: { pgPool: null as never } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool`.*null/ })
  t.throws(() => app.get('/f', { config: { pgPool: { statementTimeoutMs: -1 } } }, async () => 'x'), { code: 'FST_PG_INVALID_OPTION', message: /statementTimeoutMs/ })
  app.get('/g', { config: { pgPool: { transaction: false, shedding: true } } }, async (req) => (await req.db.query('select 1 as x')).rows[0])
  t.same((await app.inject('/g')).json(), { x: 1 }, 'transaction: false is no transaction')
})

t.test('a route given pgPool config added before the plugin is refused, not run without its transaction', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.get('/early', tx, async (req) => (await req.db.query('select 1 as x')).rows[0])
  await app.register(pgPool, { connectionString: db.url })
  const res = await app.inject('/early')
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_PG_INVALID_OPTION')
})

t.test('a BEGIN that fails (its connection was reset while idle): nothing queued behind it runs outside the transaction', async (t) => {
  const { proxy, url } = await proxied(t, db)
  // Pinging off, so the dead connection is handed out and the BEGIN is what meets the reset.
  const app = await buildApp(t, db, { connectionString: url, max: 1, pingIdleMs: false })
  let outcome: unknown[] = []
  app.post('/', tx, async (req) => {
    const inserts = [req.db.query("insert into ledger values ('one')"), req.db.query("insert into ledger values ('two')")]
    outcome = (await Promise.allSettled(inserts)).map((s) => s.status === 'rejected' ? `${(s.reason as { code?: string }).code} ${(s.reason as { cause?: { code?: string } }).cause?.code}` : 'ran')
    return outcome
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200, 'warm up: one connection in the pool')
  await db.admin('truncate ledger')
  proxy.forget()
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(outcome, ['FST_PG_CONNECTION_LOST ECONNRESET', 'FST_PG_CONNECTION_LOST ECONNRESET'], 'both refused with the BEGIN\'s error')
  t.equal(res.statusCode, 500, 'and the reply does not claim a commit')
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('statements the handler left running: those queued before the end run inside and are rolled back; later ones are refused', async (t) => {
  const app = await buildApp(t, db)
  let late: unknown
  const lateDone = deferred()
  app.post('/', tx, async (req) => {
    await req.db.query("insert into ledger values ('first')")
    await Promise.all([
      (async () => {
        await req.db.query('select pg_sleep(0.1)')
        late = await req.db.query("insert into ledger values ('second')").catch((e: { code: string }) => e.code)
        lateDone.resolve()
      })(),
      (async () => {
        await new Promise((resolve) => setTimeout(resolve, 20))
        throw new Error('payment service down')
      })()
    ])
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 500)
  await lateDone.promise
  t.equal(late, 'FST_PG_REQUEST_ENDED', 'refused: it would have run outside the transaction')
  t.same(await notes(), [], 'nothing committed')
  await assertReturned(t, app, db)
})

t.test('after the route transaction ended, connection() and its client refuse too', async (t) => {
  const app = await buildApp(t, db)
  const seen: unknown[] = []
  const checked = deferred()
  app.post('/', {
    ...tx,
    onResponse: async (req) => {
      seen.push(await req.db.connection().catch((e: { code: string }) => e.code))
      checked.resolve()
    }
  }, async (req, reply) => {
    const client = await req.db.connection()
    await client.query("insert into ledger values ('kept')")
    reply.raw.once('finish', () => { client.query('select 1').catch((e: { code: string }) => seen.push(e.code)) })
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  await checked.promise
  t.same(seen.sort(), ['FST_PG_REQUEST_ENDED', 'FST_PG_REQUEST_ENDED'])
  t.same(await notes(), ['kept'])
})

t.test('a transactional route whose handler never queried: a statement after its reply is refused too, and takes no connection', async (t) => {
  const app = await buildApp(t, db)
  let late: unknown
  const checked = deferred()
  app.post('/', {
    ...tx,
    onResponse: async (req) => {
      late = await req.db.query("insert into ledger values ('late')").catch((e: { code: string }) => e.code)
      checked.resolve()
    }
  }, async (req) => {
    t.ok(req.db, 'the handle exists; nothing is sent')
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  await checked.promise
  t.equal(late, 'FST_PG_REQUEST_ENDED')
  t.same(await notes(), [])
  t.equal(app.pg.stats().acquires, 0)
})
