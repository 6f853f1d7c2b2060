/**
 * Pins every assumption src/pg-internals.ts makes about pg's unpublished internals against the
 * pg installed and a real PostgreSQL: a pg upgrade that breaks one fails here, in a test named
 * after it, instead of somewhere downstream in the plugin.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { once } from 'node:events'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import pg from 'pg'
import Cursor from 'pg-cursor'
import QueryStream from 'pg-query-stream'
import { from as copyFrom } from 'pg-copy-streams'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import {
  busy,
  connectionParameters,
  forgetPrepared,
  forgetStatements,
  holdProcess,
  PrefixedQuery,
  type Prefix,
  waiting,
  isConnectTimeout,
  isReadTimeout,
  Query,
  refusedUnsent,
  saysLost,
  settling,
  queued
} from '../src/pg-internals.js'
import { silentServer } from './helpers/net.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, runNode } from './helpers/util.js'

const db = await setupDatabase(t)

/** A connected client, ended when the test ends. */
async function connected (t: Test, config: pg.ClientConfig = {}): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: db.url, ...config })
  t.teardown(() => client.end().catch(() => {}))
  await client.connect()
  return client
}

/** What pg's wire connection exposes beyond @types/pg. */
type Loose = Record<string, any>
const wire = (client: pg.Client): Loose => (client as unknown as { connection: Loose }).connection

/** The error a promise rejects with (fails the test if it resolves). */
async function rejection (promise: Promise<unknown>): Promise<Error & { code?: string, severity?: string }> {
  try {
    await promise
  } catch (error) {
    return error as Error
  }
  throw new Error('expected a rejection')
}

t.test('pg.Query: a class with submit, requiresPreparation and the handle* methods; connection.query/parse/bind/execute', async (t) => {
  t.type(Query, 'function', 'pg exports Query')
  t.equal(Query, (pg as unknown as Loose).Query)
  t.match(Function.prototype.toString.call(Query), /^class\b/, 'a class: PrefixedQuery extends it')
  const proto = Query.prototype as unknown as Loose
  for (const name of ['submit', 'requiresPreparation', 'handleRowDescription', 'handleDataRow', 'handleCommandComplete', 'handleError', 'handleReadyForQuery']) {
    t.type(proto[name], 'function', `Query.prototype.${name}`)
  }

  // What PrefixedQuery decides on: simple protocol without parameters, extended otherwise.
  t.equal(new Query('select 1').requiresPreparation(), false, 'text alone: simple protocol')
  t.equal(new Query('select $1::int', [1]).requiresPreparation(), true, 'values: extended')
  t.equal(new Query({ text: 'select 1', name: 'q' }).requiresPreparation(), true, 'a name: extended')

  const client = await connected(t)
  const connection = wire(client)
  for (const name of ['query', 'parse', 'bind', 'execute']) t.type(connection[name], 'function', `connection.${name}`)

  // Each writes one message, of its own type, to the socket (recorded, not sent).
  const stream = connection.stream as { write: (chunk: Buffer) => boolean }
  const write = stream.write
  const written: Buffer[] = []
  stream.write = (chunk: Buffer) => { written.push(chunk); return true }
  try {
    connection.query('select 1')
    connection.parse({ text: 'select 1' })
    connection.bind({})
    connection.execute({})
  } finally {
    stream.write = write
  }
  t.same(written.map((b) => String.fromCharCode(b[0]!)), ['Q', 'P', 'B', 'E'], 'one write per call: Query, Parse, Bind, Execute')
  for (const b of written) t.equal(b.readInt32BE(1) + 1, b.length, `${String.fromCharCode(b[0]!)}: exactly one whole message`)

  // A Query built as PrefixedQuery builds it (config, values, callback) runs through client.query().
  const viaCallback = deferred<pg.QueryResult>()
  client.query(new Query('select $1::int as n', [7], (error: Error | null, result: pg.QueryResult) => {
    if (error) throw error
    viaCallback.resolve(result)
  }) as unknown as pg.Submittable)
  t.same((await viaCallback.promise).rows, [{ n: 7 }], 'a Query object runs with its callback')

  // A subclass of Query is not refused on a pipelining client (pg refuses other submittables there).
  class Sub extends Query {}
  const piped = await connected(t, { pipeline: true })
  const viaSub = deferred<pg.QueryResult>()
  piped.query(new Sub('select 2 as n', undefined, (error: Error | null, result: pg.QueryResult) => {
    if (error) throw error
    viaSub.resolve(result)
  }) as unknown as pg.Submittable)
  t.same((await viaSub.promise).rows, [{ n: 2 }], 'a Query subclass runs on a pipeline client')
})

t.test("busy(): readyForQuery, _activeQuery and _queryQueue; 'drain' when the last settles", async (t) => {
  const client = await connected(t)
  t.equal(busy(client), false, 'connected and idle')

  const order: string[] = []
  const drained = deferred<boolean>()
  client.once('drain', () => {
    order.push('drain')
    drained.resolve(busy(client))
  })
  const first = deferred<boolean>()
  const second = deferred<boolean>()
  client.query('select pg_sleep(0.05)', (error) => {
    if (error) throw error
    order.push('first')
    // The ReadyForQuery was read and the active query cleared: only the queue says busy.
    first.resolve(busy(client))
  })
  t.equal(busy(client), true, 'true synchronously once a statement is handed to pg')
  client.query('select 1', (error) => {
    if (error) throw error
    order.push('second')
    second.resolve(busy(client))
  })
  t.equal(await first.promise, true, 'a statement still queued behind the finished one: busy (_queryQueue)')
  t.equal(await second.promise, false, 'the last statement settled: not busy')
  t.equal(await drained.promise, false, "not busy inside the 'drain' listener")
  t.same(order, ['first', 'second', 'drain'], "'drain' once, after the last statement")
  t.equal(busy(client), false, "not busy after 'drain'")

  // The same with the promise API.
  const again = deferred()
  client.once('drain', () => again.resolve())
  const running = client.query('select pg_sleep(0.05)')
  t.equal(busy(client), true)
  await running
  await again.promise
  t.equal(busy(client), false)
})

t.test('busy(): a failed statement is reported at ErrorResponse, before its ReadyForQuery', async (t) => {
  const client = await connected(t)

  /** Runs `select 1/0`; what busy() and the transaction status read in its callback and at 'drain'. */
  async function fail (): Promise<{ error: Error & { code?: string }, inCallback: { busy: boolean, status: string | null }, atDrain: { busy: boolean, status: string | null } }> {
    const drained = deferred<{ busy: boolean, status: string | null }>()
    const failed = deferred<{ error: Error, busy: boolean, status: string | null }>()
    client.once('drain', () => drained.resolve({ busy: busy(client), status: client.getTransactionStatus() }))
    client.query('select 1/0', (error) => {
      t.equal(settling(client), true, 'settling(): busy, yet nothing runs; only the ReadyForQuery is to come')
      failed.resolve({ error, busy: busy(client), status: client.getTransactionStatus() })
    })
    const { error, ...inCallback } = await failed.promise
    return { error, inCallback, atDrain: await drained.promise }
  }

  const outside = await fail()
  t.equal(outside.error.code, '22012', 'division by zero')
  t.same(outside.inCallback, { busy: true, status: 'I' }, 'in the error callback: still busy, status from before')
  t.same(outside.atDrain, { busy: false, status: 'I' }, "at 'drain': the ReadyForQuery was read")
  t.equal(busy(client), false)
  t.equal(settling(client), false, 'not settling once idle')
  const running = client.query('select pg_sleep(0.05)')
  t.equal(settling(client), false, 'not settling while a statement runs')
  await running

  await client.query('begin')
  t.equal(client.getTransactionStatus(), 'T')
  const inside = await fail()
  t.equal(inside.error.code, '22012')
  t.same(inside.inCallback, { busy: true, status: 'T' }, 'in the error callback: still busy, status still T')
  t.same(inside.atDrain, { busy: false, status: 'E' }, "at 'drain': the failed transaction is seen")
  t.equal(client.getTransactionStatus(), 'E')
  await client.query('rollback')
  t.equal(client.getTransactionStatus(), 'I')
})

t.test('busy(): _sentQueryQueue with pipeline: true', async (t) => {
  const client = await connected(t, { pipeline: true })
  t.equal((client as unknown as Loose).pipeline, true, 'pg knows the pipeline option')
  t.equal(busy(client), false)

  const drained = deferred<boolean>()
  let drains = 0
  client.on('drain', () => {
    drains++
    drained.resolve(busy(client))
  })
  const first = deferred<boolean>()
  const second = deferred<boolean>()
  client.query('select pg_sleep(0.05)', (error) => {
    if (error) throw error
    // ReadyForQuery read, no active query, nothing queued unsent: only _sentQueryQueue says busy.
    first.resolve(busy(client))
  })
  client.query('select 2', (error) => {
    if (error) throw error
    second.resolve(busy(client))
  })
  const internals = client as unknown as { _queryQueue: unknown[], _sentQueryQueue: unknown[] }
  t.equal(internals._queryQueue.length, 0, 'both were written at once')
  t.equal(internals._sentQueryQueue.length, 1, 'the second waits in _sentQueryQueue')
  t.equal(busy(client), true, 'two in flight')
  t.equal(await first.promise, true, 'the first settled, the second still in flight: busy')
  t.equal(await second.promise, false, 'both settled')
  t.equal(await drained.promise, false, "not busy at 'drain'")
  t.equal(drains, 1, "'drain' once, after both")
  t.equal(busy(client), false)
})

t.test('forgetPrepared(): pg records named statements in connection.parsedStatements; DISCARD ALL needs them forgotten', async (t) => {
  const named = { name: 'p1', text: 'select 1 as n' }

  t.test('without forgetPrepared: pg believes p1 is still prepared', async (t) => {
    const client = await connected(t)
    await client.query(named)
    t.equal(wire(client).parsedStatements.p1, named.text, 'pg records the name in parsedStatements')
    await client.query('DISCARD ALL')
    const error = await rejection(client.query(named))
    t.equal(error.code, '26000', 'prepared statement does not exist')
  })

  t.test('with forgetPrepared: it is prepared again', async (t) => {
    const client = await connected(t)
    await client.query(named)
    t.equal(wire(client).parsedStatements.p1, named.text)
    await client.query('DISCARD ALL')
    forgetPrepared(client)
    t.same(wire(client).parsedStatements, {})
    t.same(wire(client).submittedNamedStatements, {})
    const { rows } = await client.query(named)
    t.same(rows, [{ n: 1 }])
    t.equal(wire(client).parsedStatements.p1, named.text, 'recorded again')
  })
})

t.test('holdProcess(): client.ref() / unref() decide whether the socket holds the process', async (t) => {
  const client = await connected(t)
  t.type((client as unknown as Loose).ref, 'function', 'client.ref')
  t.type((client as unknown as Loose).unref, 'function', 'client.unref')

  // Only sockets that keep the process alive are listed as active resources.
  const sockets = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length
  const held = sockets()
  holdProcess(client, false)
  t.equal(sockets(), held - 1, 'unref: the socket no longer holds the process')
  holdProcess(client, true)
  t.equal(sockets(), held, 'ref: it holds it again')
  t.same((await client.query('select 1 as n')).rows, [{ n: 1 }], 'the client still works')

  // And in a process of its own: connected, let go, it exits by itself.
  const dir = mkdtempSync(join(tmpdir(), 'pg-internals-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const script = join(dir, 'child.mts')
  const root = fileURLToPath(new URL('../', import.meta.url))
  writeFileSync(script, `
import { createRequire } from 'node:module'
import { holdProcess } from ${JSON.stringify(join(root, 'src', 'pg-internals.ts'))}
const pg = createRequire(${JSON.stringify(join(root, 'package.json'))})('pg')
const [url, mode] = process.argv.slice(2)
const client = new pg.Client({ connectionString: url })
await client.connect()
await client.query('select 1')
process.stdout.write('connected\\n')
holdProcess(client, false)
if (mode === 'hold') {
  holdProcess(client, true)
  // Fires only while something else holds the process: the socket.
  setTimeout(() => { process.stdout.write('held\\n'); process.exit(0) }, 200).unref()
}
`)
  const run = (mode: string) => runNode(['--import', 'tsx', script, db.url, mode], { timeout: 10_000 })
  const released = run('release')
  t.equal(released.stderr, '')
  t.equal(released.stdout, 'connected\n')
  t.equal(released.signal, null, 'not killed by the timeout')
  t.equal(released.status, 0, 'unref: exited by itself')
  const kept = run('hold')
  t.equal(kept.stderr, '')
  t.equal(kept.stdout, 'connected\nheld\n', 'ref again: the socket kept the process alive')
  t.equal(kept.status, 0)
})

t.test('queued(): a query pg has not sent waits in client._queryQueue; sent, it is not there', async (t) => {
  t.test('pg-cursor', async (t) => {
    const client = await connected(t)
    const sleep = client.query('select pg_sleep(0.05)')
    const cursor = client.query(new Cursor('select generate_series(1, 3) as n'))
    t.equal(queued(client, cursor), true, 'queued behind a running statement')
    await sleep
    const rows = await new Promise<unknown[]>((resolve, reject) => {
      cursor.read(1, (error, rows) => { if (error) reject(error); else resolve(rows) })
    })
    t.same(rows, [{ n: 1 }])
    t.equal(queued(client, cursor), false, 'submitted')
    await cursor.close()
    t.same((await client.query('select 1 as n')).rows, [{ n: 1 }], 'closed: the client serves')
  })

  t.test('pg-query-stream', async (t) => {
    const client = await connected(t)
    const sleep = client.query('select pg_sleep(0.05)')
    const stream = client.query(new QueryStream('select generate_series(1, 10) as n', [], { batchSize: 2 }))
    t.equal(queued(client, stream), true, 'queued behind a running statement')
    await sleep
    const rows = stream[Symbol.asyncIterator]()
    t.same((await rows.next()).value, { n: 1 })
    t.equal(queued(client, stream), false, 'submitted')
    const closed = once(stream, 'close')
    stream.destroy()
    await closed
    t.same((await client.query('select 1 as n')).rows, [{ n: 1 }], 'destroyed: the client serves')
  })

  t.test('pg-copy-streams: a finished COPY FROM is not queued (its own `connection` is null again)', async (t) => {
    const client = await connected(t)
    await client.query('create temp table copied (n int)')
    const sleep = client.query('select pg_sleep(0.05)')
    const copy = client.query(copyFrom('copy copied from stdin'))
    t.equal(queued(client, copy), true, 'queued behind a running statement')
    await sleep
    await pipeline(Readable.from(['1\n', '2\n']), copy)
    t.equal(queued(client, copy), false, 'done')
    t.equal((copy as unknown as { connection: unknown }).connection, null, 'which its own field cannot tell from never sent')
    t.same((await client.query('select count(*)::int as n from copied')).rows, [{ n: 2 }])
  })
})

t.test("pg's error texts", async (t) => {
  t.test('a backend killed mid-query: lost; a query after its end: refused unsent', async (t) => {
    const client = await connected(t)
    const errors: Error[] = []
    client.on('error', (error) => errors.push(error))
    // (Not events.once(): it rejects at the 'error' that comes first.)
    const ended = deferred()
    client.once('end', () => ended.resolve())
    const { pid } = (await client.query('select pg_backend_pid() as pid')).rows[0]
    const killer = await connected(t)
    const running = rejection(client.query('select pg_sleep(10)'))
    await killer.query('select pg_terminate_backend($1)', [pid])
    const error = await running
    t.comment(`the killed query: ${error.severity ?? '(no severity)'} ${error.code ?? ''} ${error.message}`)
    t.ok(error.severity === 'FATAL' || saysLost(error.message), `FATAL or lost: ${error.message}`)
    if (error.severity === 'FATAL') t.equal(error.code, '57P01', 'admin_shutdown')
    await ended.promise
    t.ok(errors.some((e) => saysLost(e.message)), "the client's 'error' says lost")
    const refused = await rejection(client.query('select 1'))
    t.equal(refused.message, 'Client has encountered a connection error and is not queryable')
    t.equal(refusedUnsent(refused.message), true)
    t.equal(saysLost(refused.message), true)
  })

  t.test('after end(): refused unsent', async (t) => {
    const client = await connected(t)
    await client.end()
    const refused = await rejection(client.query('select 1'))
    t.equal(refused.message, 'Client was closed and is not queryable')
    t.equal(refusedUnsent(refused.message), true)
    t.equal(saysLost(refused.message), true)
  })

  t.test('query_timeout: a read timeout', async (t) => {
    const client = await connected(t, { query_timeout: 50 })
    const error = await rejection(client.query('select pg_sleep(1)'))
    t.equal(isReadTimeout(error), true, error.message)
    t.equal(isConnectTimeout(error), false)
  })

  t.test('connectionTimeoutMillis: a connect timeout', async (t) => {
    const client = new pg.Client({ host: '127.0.0.1', port: await silentServer(t), connectionTimeoutMillis: 100 })
    t.teardown(() => client.end().catch(() => {}))
    const error = await rejection(client.connect())
    t.equal(isConnectTimeout(error), true, error.message)
    t.equal(isReadTimeout(error), false)
  })

  t.test('negative checks', async (t) => {
    t.equal(isReadTimeout(new Error('x')), false)
    t.equal(isReadTimeout('Query read timeout'), false, 'a string is not an Error')
    t.equal(isConnectTimeout('timeout expired'), false, 'a string is not an Error')
    t.equal(isConnectTimeout(new Error('x')), false)
    t.equal(saysLost('syntax error'), false)
    t.equal(refusedUnsent('Connection terminated unexpectedly'), false, 'lost under a query is not refused unsent')
    t.equal(saysLost('Connection terminated unexpectedly'), true)
    t.equal(saysLost('Connection terminated'), true)
  })
})

t.test('connectionParameters(): what pg read from the config and the connection string', async (t) => {
  const params = connectionParameters(new pg.Client({ connectionString: 'postgres://u:p@h:5433/d?options=-c%20x%3D1&statement_timeout=5', lock_timeout: 7 }))
  t.match(params, { host: 'h', port: 5433, database: 'd', options: '-c x=1', statement_timeout: '5', lock_timeout: 7 })
})

t.test('forgetStatements(): connection.parsedStatements per name; waiting(): _queryQueue; a Close pg sends is ignored by it', async (t) => {
  const client = await connected(t)
  const named = { name: 'p_one', text: 'select $1::int as n', values: [1] }
  const parsed = (): boolean => wire(client).parsedStatements.p_one !== undefined
  t.equal(parsed(), false)
  await client.query(named)
  t.equal(parsed(), true, 'recorded once its Parse was answered')
  // A Close written ahead of a statement (as PrefixedQuery does): its CloseComplete is ignored.
  const closed = deferred<Error | null>()
  client.query(new PrefixedQuery([], { text: 'select $1::int as n' }, [1], (error) => closed.resolve(error), ['p_one']) as never)
  t.equal(await closed.promise, null, "pg takes the server's CloseComplete without complaint")
  t.equal((await client.query("select count(*)::int as n from pg_prepared_statements where name = 'p_one'")).rows[0].n, 0, 'closed on the server')
  forgetStatements(client, ['p_one'])
  t.equal(parsed(), false)
  t.same((await client.query(named)).rows, [{ n: 1 }], 'pg prepares it again')

  const first = client.query('select pg_sleep(0.05)')
  t.equal(waiting(client), false, 'one running, none behind it')
  const second = client.query('select 1')
  t.equal(waiting(client), true, 'one behind it')
  await Promise.all([first, second])
  t.equal(waiting(client), false)
})

t.test('PrefixedQuery: statements in front, in one write; their results dropped; passed counts them', async (t) => {
  const client = await connected(t)
  const run = (prefix: string[], text: string, values?: unknown[]): Promise<{ error: Error | null, result: pg.QueryResult | undefined, passed: number }> => new Promise((resolve) => {
    const query: PrefixedQuery = new PrefixedQuery(prefix, { text }, values, (error, result) => resolve({ error, result, passed: query.passed }))
    client.query(query as never)
  })
  const front = ['begin', "select set_config('statement_timeout', '1234', true)"]
  for (const values of [undefined, [5]]) {
    const ok = await run(front, values === undefined ? "select current_setting('statement_timeout') as s" : "select current_setting('statement_timeout') as s, $1::int as n", values)
    t.same(ok.result?.rows, [values === undefined ? { s: '1234ms' } : { s: '1234ms', n: 5 }], `${values === undefined ? 'simple' : 'extended'}: the statement's own result, inside the transaction`)
    t.equal(ok.passed, 2)
    t.equal(client.getTransactionStatus(), 'T', 'BEGIN ran: a transaction is open')
    await client.query('rollback')
  }
  const failed = await run(front, 'select 1 / $1::int', [0])
  t.match(failed.error, { code: '22012' })
  t.equal(failed.passed, 2, 'the statement failed: both in front ran')
  await client.query('rollback')
  const ahead = await run(['begin', 'select 1 / 0'], 'select $1::int', [1])
  t.match(ahead.error, { code: '22012' })
  t.equal(ahead.passed, 1, 'the second in front failed: BEGIN ran, the statement was skipped')
  await client.query('rollback')

  // Every message of the batch is written while the socket is corked: one write.
  const connection = wire(client)
  const stream = connection.stream as { writableCorked: number }
  const parse = connection.parse
  const corked: number[] = []
  connection.parse = function (...args: unknown[]) { corked.push(stream.writableCorked); return parse.apply(this, args) }
  try {
    const named = await run(['begin'], 'select $1::int as n', [3])
    t.same(named.result?.rows, [{ n: 3 }])
  } finally {
    connection.parse = parse
  }
  t.ok(corked.length === 2 && corked.every((n) => n > 0), 'the parse of the BEGIN and of the statement, both corked')
  await client.query('rollback')
})

t.test('PrefixedQuery: a statement in front with parameters, prepared by name once, closed and prepared again after a failure', async (t) => {
  const client = await connected(t)
  const run = (prefix: Prefix[], config: object): Promise<{ error: Error | null, rows: unknown[] | undefined, passed: number }> => new Promise((resolve) => {
    const query: PrefixedQuery = new PrefixedQuery(prefix, config, undefined, (error, result) => resolve({ error, rows: result?.rows, passed: query.passed }))
    client.query(query as never)
  })
  const connection = wire(client)
  const parses: string[] = []
  const closes: string[] = []
  const { parse, close } = connection
  connection.parse = function (msg: { text: string, name?: string }) { parses.push(msg.name ?? ''); return parse.call(this, msg) }
  connection.close = function (msg: { type: 'S', name: string }) { closes.push(msg.name); return close.call(this, msg) }
  t.teardown(() => Object.assign(connection, { parse, close }))
  const setting = (value: string, name?: string): Prefix => ({ text: 'select set_config($1, $2, true)', values: ['app.x', value], name })
  const read = { text: "select current_setting('app.x', true) as x" }

  // A statement without parameters goes the extended way behind it, in the same transaction.
  t.same((await run([setting('1')], read)).rows, [{ x: '1' }])
  t.same((await run([setting('2')], { text: 'select current_setting($1, true) as x', values: ['app.x'] })).rows, [{ x: '2' }])
  t.same(parses, ['', '', '', ''], 'unnamed: parsed every time')
  parses.length = 0

  for (const value of ['3', '4']) t.same((await run([setting(value, 'p_set')], read)).rows, [{ x: value }])
  t.same(parses, ['p_set', '', ''], 'named: parsed on its first use only')
  t.equal(connection.parsedStatements.p_set, 'select set_config($1, $2, true)')
  parses.length = 0

  // It fails (in an aborted transaction nothing parses): in doubt, so closed and parsed again next time.
  await client.query('begin')
  await client.query('select 1/0').catch(() => {})
  const failed = await run([setting('5', 'p_set')], read)
  t.match(failed.error, { code: '25P02' })
  t.equal(failed.passed, 0)
  await client.query('rollback')
  parses.length = 0
  t.same((await run([setting('6', 'p_set')], read)).rows, [{ x: '6' }], 'works again')
  t.same(closes, ['p_set'], 'closed first, in case the server had it')
  t.same(parses, ['p_set', ''])
  // Gone from the server behind pg's back (DEALLOCATE ALL): 26000 once, then prepared again.
  await client.query('deallocate all')
  t.match((await run([setting('7', 'p_set')], read)).error, { code: '26000' })
  t.same((await run([setting('8', 'p_set')], read)).rows, [{ x: '8' }])
  t.equal(client.getTransactionStatus(), 'I', 'nothing left open')
})
