/**
 * The replication pair of helpers/replica.ts: a real hot standby streaming from a real primary,
 * lag on purpose that does not hold the primary back, and a replica that can be stopped and
 * started again.
 */
import { createServer } from 'node:net'
import t from 'tap'
import pg from 'pg'
import { startReplicaPair } from './helpers/replica.js'

const pair = await startReplicaPair(t)

async function query (url: string, text: string, values?: unknown[]): Promise<any[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query(text, values)).rows
  } finally {
    await client.end()
  }
}

const count = async (url: string): Promise<number> =>
  (await query(url, 'select count(*)::int as n from items'))[0].n

t.test('the replica is a hot standby of the primary', async (t) => {
  t.same(await query(pair.primary.url, 'select pg_is_in_recovery() as r'), [{ r: false }], 'primary')
  t.same(await query(pair.replica.url, 'select pg_is_in_recovery() as r'), [{ r: true }], 'replica')
  t.not(pair.primary.port, pair.replica.port)
})

t.test('writes on the primary reach the replica', async (t) => {
  await query(pair.primary.url, 'create table items (id serial primary key, label text not null)')
  await query(pair.primary.url, "insert into items (label) values ('one')")
  await pair.caughtUp()
  t.same(await query(pair.replica.url, 'select label from items'), [{ label: 'one' }])
})

t.test('the replica refuses writes', async (t) => {
  await t.rejects(query(pair.replica.url, "insert into items (label) values ('nope')"), { code: '25006' })
})

t.test('paused replay: the primary goes on, the replica lags, then catches up', async (t) => {
  await pair.pauseReplay()
  const started = Date.now()
  await query(pair.primary.url, "insert into items (label) values ('two')")
  const ms = Date.now() - started
  t.ok(ms < 1000, `the insert on the primary took ${ms} ms`)
  t.equal(await count(pair.primary.url), 2)
  await t.rejects(pair.caughtUp(300), /did not catch up.*replay pause/, 'caughtUp() says replay is paused')
  t.equal(await count(pair.replica.url), 1, 'the replica does not see it yet')
  await pair.resumeReplay()
  await pair.caughtUp()
  t.equal(await count(pair.replica.url), 2, 'the replica sees it after resuming')
})

t.test('a stopped replica does not stop the primary; restarted, it catches up', async (t) => {
  await pair.replica.stop()
  await t.rejects(query(pair.replica.url, 'select 1'), { code: 'ECONNREFUSED' })
  await query(pair.primary.url, "insert into items (label) values ('three')")
  t.equal(await count(pair.primary.url), 3)
  await pair.replica.start()
  await pair.caughtUp()
  t.equal(await count(pair.replica.url), 3)
})

t.test('the replica survives a crash (immediate stop)', async (t) => {
  await pair.replica.stop('immediate')
  await query(pair.primary.url, "insert into items (label) values ('four')")
  await pair.replica.start()
  await pair.caughtUp()
  t.equal(await count(pair.replica.url), 4)
})

t.test('a restarted primary: the replica streams from it again', async (t) => {
  await pair.primary.stop()
  await pair.primary.start()
  await query(pair.primary.url, "insert into items (label) values ('five')")
  await pair.caughtUp()
  t.equal(await count(pair.replica.url), 5)
})

t.test('a primary restarted on another port (its port taken): the replica follows it', async (t) => {
  const port = pair.primary.port
  await pair.primary.stop()
  // The replica's WAL receiver keeps trying the old port meanwhile: hang up on it.
  const squatter = createServer((socket) => socket.destroy())
  await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve))
  await pair.primary.start()
  await new Promise((resolve) => squatter.close(resolve))
  t.not(pair.primary.port, port, `moved from ${port} to ${pair.primary.port}`)
  await query(pair.primary.url, "insert into items (label) values ('six')")
  await pair.caughtUp()
  t.equal(await count(pair.replica.url), 6)
})
