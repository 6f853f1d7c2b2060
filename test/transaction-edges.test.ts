/**
 * The edges of transactions and of a request's end: a transaction() the request outlives, a route
 * transaction whose BEGIN or ROLLBACK cannot run, a connection() asked for while things change,
 * the statement forms the transaction rewrite meets, and statements whose checkout fails after the
 * reply.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import Cursor from 'pg-cursor'
import t from 'tap'
import { assertReturned, buildApp, holdRoute } from './helpers/app.js'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { code, ledger, tx } from './helpers/ledger.js'
import { deferred, listen, send, until } from './helpers/util.js'

const db = await setupDatabase(t)
const { notes, insert } = await ledger(t, db)

t.test('a transaction() whose client aborted: its COMMIT is refused, nothing committed', async (t) => {
  const app = await buildApp(t, db)
  const inserted = deferred()
  const outcome = deferred<unknown>()
  app.post('/', async (req) => {
    outcome.resolve(await req.db.transaction(async (tx) => {
      await tx.query(insert('aborted'))
      inserted.resolve()
      await sleep(100)
    }).then(() => 'committed', code))
    return 'too late'
  })
  const sent = send(await listen(app), { method: 'POST', body: {} })
  await inserted.promise
  sent.req.destroy()
  t.equal(await outcome.promise, 'FST_PG_REQUEST_ENDED')
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('a route transaction ends while a transaction() inside still runs: that part is rolled back, the rest commits', async (t) => {
  const app = await buildApp(t, db)
  const inner = deferred<unknown>()
  app.post('/', tx, async (req) => {
    await req.db.query(insert('route'))
    req.db.transaction(async (tx) => {
      await tx.query(insert('unfinished'))
      await sleep(50)
      await tx.query(insert('too late'))
    }).then(() => inner.resolve('committed'), (error: unknown) => inner.resolve(code(error)))
    await sleep(10)
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  t.equal(await inner.promise, 'FST_PG_REQUEST_ENDED', 'as every statement after the route transaction ended')
  t.same(await notes(), ['route'])
  await assertReturned(t, app, db)
})

t.test("a route transaction whose BEGIN failed and whose handler then throws: the handler's error is the reply", async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, max: 1, pingIdleMs: false })
  app.post('/', tx, async (req) => {
    await req.db.query(insert('one')).catch(() => 'refused')
    throw Object.assign(new Error('the handler gives up'), { statusCode: 409 })
  })
  await app.pg.query('select 1') // one pooled connection
  proxy.forget()
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 409)
  t.same(await notes(), [])
})

t.test('a route transaction rolled back on a dead connection: the reply stays the handler\'s', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req, reply) => {
    await req.db.query(insert('lost'))
    const { rows: [{ pid }] } = await req.db.query('select pg_backend_pid() as pid')
    await db.admin('select pg_terminate_backend($1)', [pid])
    return reply.code(422).send({ invalid: true })
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 422)
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('connection() asked for while the checkout waits, then the client aborts: refused', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const { holding, release } = holdRoute(app)
  const outcome = deferred<unknown>()
  app.get('/', async (req) => {
    outcome.resolve(await req.db.connection().then(() => 'a client', code))
    return 'x'
  })
  const url = await listen(app)
  const held = send(`${url}/hold`)
  await holding
  const sent = send(url)
  await until(() => app.pg.stats().waiting === 1, 'the checkout waits')
  sent.req.destroy()
  t.equal(await outcome.promise, 'FST_PG_REQUEST_ENDED')
  release()
  await held.done
  await assertReturned(t, app, db)
})

t.test('connection() asked for just before a transaction() opens: refused once the transaction is open', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => {
    const client = req.db.connection().then(() => 'a client', code)
    const committed = await req.db.transaction(async (tx) => await (await tx.connection()).query('select 1 as n'))
    return { client: await client, n: committed.rows[0].n }
  })
  t.same((await app.inject('/')).json(), { client: 'FST_PG_TRANSACTION_SCOPE', n: 1 })
})

t.test('statement forms inside the plugin\'s transaction', async (t) => {
  const app = await buildApp(t, db)
  const seen: Record<string, unknown> = {}
  app.post('/', async (req) => {
    await req.db.transaction(async (tx) => {
      // A config object: rewritten, its other fields kept.
      seen.config = (await tx.query({ text: 'begin', values: [] })).command
      await tx.query({ text: insert('config') })
      seen.configEnd = (await tx.query({ text: 'commit' })).command
      // Not control: sent as they are (the server judges them).
      seen.start = await tx.query('start').then(() => 'ran', code)
    }).catch(code)
    await req.db.transaction(async (tx) => {
      seen.prepare = (await tx.query('prepare twice as select 2 as n')).command
      await tx.query({ name: 'by-name', text: 'select 3 as n' })
      seen.byName = (await tx.query({ name: 'by-name' } as never)).rows[0].n
      seen.leading = (await tx.query(';begin')).command
      await tx.query('commit')
      const client = await tx.connection()
      try {
        client.query(new Cursor('commit'))
      } catch (error) {
        seen.cursor = code(error)
      }
      await new Promise((resolve) => client.query('select 4 as n', (error: Error | null, result: { rows: Array<{ n: number }> }) => resolve(error ?? result.rows[0]?.n)))
        .then((n) => { seen.callback = n })
    })
    return seen
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  t.same(seen, {
    config: 'SAVEPOINT',
    configEnd: 'RELEASE',
    start: '42601',
    prepare: 'PREPARE',
    byName: 3,
    leading: 'SAVEPOINT',
    cursor: 'FST_PG_TRANSACTION_CONTROL',
    callback: 4
  })
  t.same(await notes(), [], 'the first transaction failed (a syntax error) and was rolled back')
})

t.test('a BEGIN of the user\'s that fails (in a failed transaction) opens nothing to COMMIT', async (t) => {
  const app = await buildApp(t, db)
  const seen: unknown[] = []
  app.post('/', async (req) => {
    seen.push(await req.db.transaction(async (tx) => {
      await tx.query('select 1 / 0').catch(() => 'caught')
      seen.push(await tx.query('begin').catch(code))
      seen.push(await tx.query('commit').catch(code))
    }).catch(code))
    return 'ok'
  })
  await app.inject({ method: 'POST', url: '/' })
  t.same(seen, ['25P02', 'FST_PG_TRANSACTION_CONTROL', 'FST_PG_TRANSACTION_ABORTED'])
})

t.test('transaction options: an unknown key is refused, with a suggestion when one is close', async (t) => {
  const app = await buildApp(t, db)
  app.get('/', async (req) => ({
    far: await req.db.transaction(async () => 1, { zzz: true } as never).catch((e: Error) => e.message),
    near: await req.db.transaction(async () => 1, { readonly: true } as never).catch((e: Error) => e.message)
  }))
  const { far, near } = (await app.inject('/')).json()
  t.match(far, /`zzz` to be a transaction option, got an unknown key/)
  t.match(near, /did you mean `readOnly`/)
})

t.test('a statement fired after the reply whose checkout then fails: refused, nothing leaks', async (t) => {
  const app = await buildApp(t, db, { max: 1, acquireTimeoutMs: 100 })
  const { holding, release } = holdRoute(app)
  app.get('/', async (req) => {
    req.db.query(insert('never'))
    return 'answered at once'
  })
  const held = app.inject('/hold')
  await holding
  t.equal((await app.inject('/')).body, 'answered at once')
  await until(() => app.pg.stats().acquireTimeouts === 1, 'the checkout timed out')
  release()
  await held
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})

t.test('connection() on a transactional route whose BEGIN is still on its way when the client aborts: refused', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const app = await buildApp(t, db, { connectionString: url, pingIdleMs: false })
  await app.pg.query('select 1') // one pooled connection, through the proxy
  const outcome = deferred<unknown>()
  app.post('/', tx, async (req) => {
    outcome.resolve(await req.db.connection().then(() => 'a client', code))
    return 'x'
  })
  const sent = send(await listen(app), { method: 'POST', body: {} })
  proxy.hold() // the BEGIN waits in the kernel
  await until(() => app.pg.stats().active === 1, 'the checkout holds the connection')
  sent.req.destroy()
  await sent.done
  proxy.resume()
  t.equal(await outcome.promise, 'FST_PG_REQUEST_ENDED')
  await assertReturned(t, app, db)
})

t.test('in process: a statement the handler did not await runs after the reply, then the connection goes back', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => {
    req.db.query(insert('fired')).catch(() => {})
    req.db.query(insert('and forgotten')).catch(() => {})
    return 'answered'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).body, 'answered')
  await until(async () => (await notes()).length === 2, 'both ran')
  t.same(await notes(), ['and forgotten', 'fired'])
  await assertReturned(t, app, db)
})

t.test('regression, was: a hang: the connection died while a statement of transaction() ran, fn caught it, and the COMMIT waited for a ReadyForQuery that never comes', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => await req.db.transaction(async (tx) => {
    await tx.query(insert('lost'))
    const { rows: [{ pid }] } = await tx.query('select pg_backend_pid() as pid')
    const running = tx.query('select pg_sleep(5)').then(() => 'ran', code)
    await until(async () => (await db.admin("select 1 from pg_stat_activity where pid = $1 and state = 'active'", [pid])).rowCount === 1, 'the statement runs')
    await db.admin('select pg_terminate_backend($1)', [pid])
    return await running // caught: fn goes on to COMMIT
  }).catch(code))
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.body, 'FST_PG_CONNECTION_LOST', `answered, and coded: nothing committed (${res.body})`)
  t.same(await notes(), [])
  await assertReturned(t, app, db)
})
