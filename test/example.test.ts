/**
 * The example a user runs with `npm start`: starts, serves its notes API on the real database,
 * and shuts down cleanly on SIGINT. (Here against the test database through DATABASE_URL; the
 * embedded-database path is what `npm start` uses on a fresh machine.)
 */
import t from 'tap'
import { startExample } from './helpers/example.js'
import { setupDatabase } from './helpers/postgres.js'

const db = await setupDatabase(t)

t.test('npm start: the notes API works end to end', async (t) => {
  const { base, output, stop } = await startExample(t, { DATABASE_URL: db.url })
  t.match(output(), /PostgreSQL: postgres:\/\/postgres:\*\*\*@/, 'prints the database URL without its password')
  t.match(output(), /Try:\s+curl/, 'prints a ready-to-paste curl line')

  const created = await fetch(`${base}/notes`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ title: 'first', body: 'hello', tags: ['pg', 'fastify', 'pg'] })
  })
  t.equal(created.status, 201)
  const note = await created.json() as { id: string, tags: string[] }
  t.same(note.tags, ['fastify', 'pg'])
  const fetched = await (await fetch(`${base}/notes/${note.id}`)).json()
  t.match(fetched, { id: note.id, title: 'first', body: 'hello', tags: ['fastify', 'pg'] })
  const list = await (await fetch(`${base}/notes`)).json() as unknown[]
  t.ok(list.length >= 1)
  t.equal((await fetch(`${base}/notes/999999`)).status, 404)
  const invalid = await fetch(`${base}/notes`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"tags":[""]}' })
  t.equal(invalid.status, 400)

  const health = await (await fetch(`${base}/health`)).json() as { pool: { acquires: number, holdMs: { count: number } } }
  t.ok(health.pool.acquires >= 4, 'stats() counted the checkouts')
  t.ok(health.pool.holdMs.count >= 4)
  const scrape = await fetch(`${base}/metrics`)
  t.match(scrape.headers.get('content-type'), /text\/plain/)
  const text = await scrape.text()
  t.match(text, /^pg_pool_connections\{db="default"\} \d+$/m, 'pool gauges')
  t.match(text, /^pg_pool_acquires_total\{db="default"\} ([4-9]|\d\d+)$/m, 'counters from stats()')
  t.match(text, /^pg_pool_connections_destroyed_total\{db="default",reason="error"\} 0$/m, 'destroyed by reason')
  t.match(text, /^pg_pool_acquire_wait_seconds_count\{db="default"\} ([4-9]|\d\d+)$/m, 'histograms from the diagnostics channels')
  t.match(text, /^pg_pool_hold_seconds_bucket\{le="\+Inf",db="default"\} ([4-9]|\d\d+)$/m)
  t.notMatch(text, /db="replica"/, 'no replica without REPLICA_URL')
  t.notMatch(text, /password|postgres:\/\//, 'no secret in the metrics')

  t.equal(await stop(), 0, 'stops cleanly on Ctrl-C')
})
