/**
 * The connection is returned on every path a Fastify request can end by. Each test ends the
 * request one way and then checks: nothing checked out, no transaction left open, pool serving.
 * Queries that must still be running when the request ends block on an advisory lock held by
 * the test, so nothing depends on timing.
 */
import { Readable, Transform } from 'node:stream'
import QueryStream from 'pg-query-stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import t, { type Test } from 'tap'
import { appBackends, assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, listen, send } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table events (id serial primary key, note text not null)')

const LOCK = 4242
const lock = (): Promise<unknown> => db.admin('select pg_advisory_lock($1)', [LOCK])
const unlock = (): Promise<unknown> => db.admin('select pg_advisory_unlock($1)', [LOCK])
const blockedQuery = `select pg_advisory_xact_lock(${LOCK})`

async function notes (): Promise<string[]> {
  const { rows } = await db.admin<{ note: string }>('select note from events order by id')
  return rows.map((r) => r.note)
}

t.beforeEach(async () => { await db.admin('truncate events') })

t.test('1. success with several queries', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.post('/', async (req) => {
    await req.db.query('begin')
    await req.db.query("insert into events (note) values ('one')")
    await req.db.query("insert into events (note) values ('two')")
    await req.db.query('commit')
    const { rows } = await req.db.query('select count(*)::int as n from events')
    return rows[0]
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { n: 2 })
  await assertReturned(t, app, db)
  t.same(await notes(), ['one', 'two'])
})

t.test('2. handler throws after a query (inside a transaction)', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.post('/', async (req) => {
    await req.db.query('begin')
    await req.db.query("insert into events (note) values ('lost')")
    throw new Error('boom')
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 500)
  await assertReturned(t, app, db)
  t.same(await notes(), [], 'the open transaction was rolled back')
})

t.test('3. 404 and routes that never touch request.db check nothing out', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/plain', async () => 'plain')
  t.equal((await app.inject('/plain')).statusCode, 200)
  t.equal((await app.inject('/missing')).statusCode, 404)
  t.equal(app.pg.stats().total, 0, 'no connection was opened')
  t.same(await appBackends(db), [])
})

t.test('4. an onRequest hook and a preHandler hook that throw after querying', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.register(async (scoped) => {
    scoped.addHook('onRequest', async (req) => {
      await req.db.query('begin')
      await req.db.query("insert into events (note) values ('onRequest')")
      throw new Error('onRequest failed')
    })
    scoped.get('/on-request', async () => 'unreachable')
  })
  app.register(async (scoped) => {
    scoped.addHook('preHandler', async (req) => {
      await req.db.query('begin')
      await req.db.query("insert into events (note) values ('preHandler')")
      throw new Error('preHandler failed')
    })
    scoped.get('/pre-handler', async () => 'unreachable')
  })
  t.equal((await app.inject('/on-request')).statusCode, 500)
  await assertReturned(t, app, db)
  t.equal((await app.inject('/pre-handler')).statusCode, 500)
  await assertReturned(t, app, db)
  t.same(await notes(), [])
})

/**
 * Paths 5, 6, 10 and 11 share a shape: the handler is inside a transaction with a query blocked
 * on the test's lock when the request ends. The connection must stay out of the pool until that
 * query settles, then come back rolled back; and the handler's next query must be refused.
 */
async function abortMidQuery (
  t: Test,
  { method, end, server = {} }: { method: 'GET' | 'POST', end: 'client' | 'timeout', server?: object }
): Promise<void> {
  const app = await buildApp(t, db, { max: 1 }, server)
  const blocked = deferred()
  const ended = deferred()
  const running = deferred<unknown>()
  const after = deferred<unknown>()
  const handler = async (req: FastifyRequest, reply: FastifyReply): Promise<string> => {
    reply.raw.once('close', () => ended.resolve())
    await req.db.query('begin')
    await req.db.query("insert into events (note) values ('aborted')")
    const pending = req.db.query(blockedQuery)
    blocked.resolve()
    running.resolve(await pending.then(() => 'ran', (error: unknown) => error))
    try {
      await req.db.query("insert into events (note) values ('after the end')")
      after.resolve('ran')
    } catch (error) {
      after.resolve(error)
    }
    return 'done'
  }
  if (method === 'GET') app.get('/', handler)
  else app.post('/', handler)
  const url = await listen(app)

  await lock()
  t.teardown(unlock)
  const sent = send(url, method === 'POST' ? { method, body: { hello: 'world' } } : { method })
  await blocked.promise
  if (end === 'client') sent.req.destroy()
  t.type(await sent.done, Error, 'the client saw no response')
  await ended.promise
  // The lock is still held: only a cancel can end the statement that waits for it.
  t.match(await running.promise, { code: 'FST_PG_CANCELLED', cause: { code: '57014' } }, 'the running statement was cancelled when the request ended')
  const error = await after.promise as { code?: string }
  t.equal(error.code, 'FST_PG_REQUEST_ENDED', 'a query after the end is refused with a coded error')
  await assertReturned(t, app, db)
  t.match(app.pg.stats(), { cancels: 1, cancelsSettled: 1 })
  t.same(await notes(), [], 'the transaction was rolled back and the late insert never ran')
}

t.test('5. client aborts a GET while its query runs', (t) => abortMidQuery(t, { method: 'GET', end: 'client' }))

t.test('6. client aborts a POST after the body was parsed, mid-handler', (t) => abortMidQuery(t, { method: 'POST', end: 'client' }))

t.test('7. reply.hijack() then reply.raw.end()', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req, reply) => {
    reply.hijack()
    await req.db.query('begin')
    const { rows } = await req.db.query('select 7 as n')
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.end(String(rows[0].n))
  })
  const url = await listen(app)
  const res = await send(url).done
  t.notOk(res instanceof Error)
  t.equal((res as { body: string }).body, '7')
  await assertReturned(t, app, db)
})

t.test('8. hijack, then the socket is destroyed', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const queried = deferred()
  app.get('/', async (req, reply) => {
    reply.hijack()
    await req.db.query('begin')
    await req.db.query("insert into events (note) values ('hijacked')")
    queried.resolve()
    // never writes a response
  })
  const url = await listen(app)
  const sent = send(url)
  await queried.promise
  sent.req.destroy()
  await sent.done
  await assertReturned(t, app, db)
  t.same(await notes(), [])
})

t.test('9. a streamed reply aborted mid-stream', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const streamError = deferred<unknown>()
  app.get('/', async (req, reply) => {
    await req.db.query('begin')
    let i = 0
    const stream = new Readable({
      read () {
        req.db.query<{ i: number }>('select $1::int as i', [i++]).then(
          ({ rows }) => this.push(JSON.stringify(rows[0]) + '\n'),
          (error: unknown) => { streamError.resolve(error); this.destroy() }
        )
      }
    })
    return reply.type('application/x-ndjson').send(stream)
  })
  const url = await listen(app)
  const sent = send(url)
  const res = await sent.headers
  await new Promise((resolve) => res.once('data', resolve))
  sent.req.destroy()
  await sent.done
  await assertReturned(t, app, db)
})

t.test('10. the server connectionTimeout fires mid-handler', (t) =>
  abortMidQuery(t, { method: 'GET', end: 'timeout', server: { connectionTimeout: 200 } }))

t.test('11. a handler that never replies, and the client goes away', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const queried = deferred()
  app.get('/', async (req) => {
    await req.db.query('begin')
    await req.db.query("insert into events (note) values ('never replied')")
    queried.resolve()
    return await new Promise(() => {})
  })
  const url = await listen(app)
  const sent = send(url)
  await queried.promise
  sent.req.destroy()
  await sent.done
  await assertReturned(t, app, db)
  t.same(await notes(), [])
})

t.test('12. a serialization error after the query', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', {
    schema: { response: { 200: { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] } } }
  }, async (req) => {
    await req.db.query('begin')
    await req.db.query("insert into events (note) values ('unserialisable')")
    return { n: 'not a number' }
  })
  const res = await app.inject('/')
  t.equal(res.statusCode, 500)
  await assertReturned(t, app, db)
  t.same(await notes(), [])
})

t.test('9b. a pg-query-stream reply (connection() + cursor) aborted mid-stream', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req, reply) => {
    const client = await req.db.connection()
    const rows = client.query(new QueryStream('select i, repeat($1, 200) as pad from generate_series(1, 1000000) as i', ['x'], { batchSize: 100 }))
    const lines = new Transform({
      objectMode: true,
      transform (row, _enc, done) { done(null, JSON.stringify(row) + '\n') }
    })
    rows.on('error', (error) => lines.destroy(error))
    return reply.type('application/x-ndjson').send(rows.pipe(lines))
  })
  const url = await listen(app)
  const sent = send(url)
  const res = await sent.headers
  await new Promise((resolve) => res.once('data', resolve))
  sent.req.destroy()
  await sent.done
  await assertReturned(t, app, db)
  t.equal(app.pg.stats().total, 1, 'the cursor was closed and the connection kept')
})
