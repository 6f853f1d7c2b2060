/**
 * The test proxy's cutAfter(): a statement reaches the server, the client never hears the reply
 * (a lost COMMIT reply). Plain pg clients through the proxy; the outcome read on the server.
 */
import { createServer, connect } from 'node:net'
import pg from 'pg'
import t from 'tap'
import { proxied } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { until } from './helpers/util.js'

interface Teardown { teardown (fn: () => unknown): void }

const db = await setupDatabase(t)
await db.admin('create table t (k int)')

const COMMIT = /^\s*commit\b/i

let clients = 0

/** A plain pg client through `url`, with an application_name of its own. */
async function connectThrough (t: Teardown, url: string): Promise<{ client: pg.Client, name: string }> {
  const name = `proxy-test-${++clients}`
  const client = new pg.Client({ connectionString: url, application_name: name })
  client.on('error', () => {})
  await client.connect()
  t.teardown(() => client.end().catch(() => {}))
  return { client, name }
}

/** Waits until the server has ended the client's session: it has run all it was sent. */
async function sessionEnded (name: string): Promise<void> {
  await until(async () => (await db.admin('select 1 from pg_stat_activity where application_name = $1', [name])).rowCount === 0, `the session of ${name} has ended`)
}

async function applied (k: number): Promise<number> {
  return (await db.admin<{ n: number }>('select count(*)::int as n from t where k = $1', [k])).rows[0]!.n
}

/**
 * A relay in front of `port` that passes on what the client sends one byte per turn of the event
 * loop, so that the proxy behind it reads every message in pieces.
 */
async function slicer (t: Teardown, port: number): Promise<string> {
  const server = createServer((from) => {
    const to = connect(port, '127.0.0.1')
    from.on('data', async (chunk: Buffer) => {
      from.pause()
      for (const byte of chunk) {
        to.write(Buffer.of(byte))
        await new Promise((resolve) => setImmediate(resolve))
      }
      from.resume()
    })
    to.pipe(from)
    // A reset on one side is passed on as a reset.
    from.on('error', () => to.resetAndDestroy())
    to.on('error', () => from.resetAndDestroy())
    from.on('close', () => to.destroy())
    to.on('close', () => from.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  const url = new URL(db.url)
  url.port = String((server.address() as { port: number }).port)
  return url.toString()
}

t.test("at 'sent': the COMMIT reaches the server, the client gets a connection error", async (t) => {
  const { proxy, url } = await proxied(t, db)
  proxy.cutAfter(COMMIT, { once: true })
  const { client, name } = await connectThrough(t, url)
  await client.query('begin')
  await client.query('insert into t values (1)')
  await t.rejects(client.query('commit'), { code: 'ECONNRESET' })
  t.equal(proxy.cuts, 1)
  await sessionEnded(name)
  t.equal(await applied(1), 1, 'the server committed')

  const { client: next } = await connectThrough(t, url)
  await next.query('begin')
  await next.query('insert into t values (2)')
  await next.query('commit')
  t.equal(await applied(2), 1, 'a `once` rule is spent')
  t.equal(proxy.cuts, 1)
})

t.test("at 'reply': the server has committed when the client gets the error", async (t) => {
  const { proxy, url } = await proxied(t, db)
  proxy.cutAfter(COMMIT, { at: 'reply' })
  const { client } = await connectThrough(t, url)
  // A reply larger than one chunk: the server side is framed across chunk boundaries too.
  const { rows } = await client.query("select repeat('x', 300000) as big")
  t.equal(rows[0].big.length, 300000)
  await client.query('begin')
  await client.query('insert into t values ($1)', [3])
  await t.rejects(client.query('COMMIT'), { code: 'ECONNRESET' })
  t.equal(await applied(3), 1, 'committed, without waiting for the session to end')
})

t.test('extended protocol: statements before it are framed; a COMMIT sent with Parse is cut after Sync', async (t) => {
  const { proxy, url } = await proxied(t, db)
  proxy.cutAfter(COMMIT)
  const first = await connectThrough(t, url)
  await first.client.query('begin')
  await first.client.query({ text: 'insert into t values ($1)', values: [4], name: 'ins' })
  await first.client.query("select 'commit' as word, $1::int as n", [1])
  await t.rejects(first.client.query('commit'), { code: 'ECONNRESET' })

  const second = await connectThrough(t, url)
  await second.client.query('begin')
  await second.client.query('insert into t values ($1)', [5])
  // Cut before Bind/Execute/Sync, this COMMIT would never run and the insert would roll back.
  await t.rejects(second.client.query({ text: 'commit', name: 'fin' }), { code: 'ECONNRESET' })

  await sessionEnded(first.name)
  await sessionEnded(second.name)
  t.equal(await applied(4), 1)
  t.equal(await applied(5), 1)
  t.equal(proxy.cuts, 2)
})

t.test('messages split across chunks; END; a predicate', async (t) => {
  const { proxy } = await proxied(t, db)
  proxy.cutAfter((text) => /^\s*(commit|end)\b/i.test(text), { at: 'reply' })
  const { client } = await connectThrough(t, await slicer(t, proxy.port))
  await client.query('begin')
  await client.query('insert into t values ($1)', [6])
  await t.rejects(client.query('  END'), { code: 'ECONNRESET' })
  t.equal(await applied(6), 1)
})

t.test('a rule applies to open and new connections until removed; other statements pass', async (t) => {
  const { proxy, url } = await proxied(t, db)
  const open = await connectThrough(t, url)
  const remove = proxy.cutAfter(COMMIT)
  const fresh = await connectThrough(t, url)
  for (const { client } of [open, fresh]) {
    t.same((await client.query("select 'commit' as word")).rows, [{ word: 'commit' }])
    await client.query('begin')
    await t.rejects(client.query('commit'), { code: 'ECONNRESET' })
  }
  t.equal(proxy.cuts, 2)
  remove()
  const after = await connectThrough(t, url)
  await after.client.query('begin')
  await after.client.query('commit')
  t.equal(proxy.cuts, 2)
})
