/**
 * The abort-mid-statement scenario of cancel.test.ts, for the ways the CancelRequest may travel
 * (through PgBouncer, over TLS): a request running `select pg_sleep(10)` is aborted by its
 * client, and the statement must stop on the server, the cancel settle and the next request be
 * served, each within 1 s of the abort.
 */
import { performance } from 'node:perf_hooks'
import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import type { Database } from './postgres.js'
import { listen, send, until } from './util.js'

const SLEEP = 'select pg_sleep(10)'

/** Backends of the test database running the sleep (seen by a direct admin connection). */
export async function sleeping (db: Database): Promise<number[]> {
  const { rows } = await db.admin<{ pid: number }>(
    `select pid from pg_stat_activity
      where datname = current_database() and pid <> pg_backend_pid() and state = 'active' and query like '%pg_sleep(10)%'`
  )
  return rows.map((row) => row.pid)
}

/** ms from now until `GET path` answers 200. */
async function servedAfter (url: string, path: string): Promise<{ ms: number, body: string }> {
  const start = performance.now()
  const res = await send(`${url}${path}`).done
  if (res instanceof Error || res.status !== 200) throw new Error(`not served: ${res instanceof Error ? res.message : res.body}`)
  return { ms: performance.now() - start, body: res.body }
}

export interface Aborted {
  /** pid of the backend that ran the sleep (a server connection of PgBouncer's, behind it). */
  backend: number
  /** ms from the abort until the sleep was no longer active on the server (Infinity: not within 1 s). */
  stoppedMs: number
  /** ms from the abort until the next request was served. */
  nextMs: number
  /** What the next request answered (`GET /pid`: its backend's pid). */
  nextBody: string
}

/**
 * Registers `/sleep` and `/pid` on `app` (not yet listening), starts it, aborts a `/sleep`
 * 150 ms into its statement, and asserts what must follow: the statement stopped on the server
 * (cancelled, its backend alive and idle: not terminated), the handler's statement rejected
 * with FST_PG_CANCELLED caused by the server's 57014, `cancels: 1, cancelsSettled: 1`, nothing
 * destroyed as stuck, and the next request served; each within 1 s of the abort.
 */
export async function abortMidSleep (t: Test, app: FastifyInstance, db: Database, label: string): Promise<Aborted> {
  const failures: unknown[] = []
  app.get('/sleep', async (req) => {
    try {
      return (await req.db.query(SLEEP)).rows
    } catch (error) {
      failures.push(error)
      throw error
    }
  })
  app.get('/pid', async (req) => (await req.db.query('select pg_backend_pid() as pid')).rows[0].pid)
  const url = await listen(app)
  await servedAfter(url, '/pid') // the pool's connection exists before the sleep is sent

  const sent = send(`${url}/sleep`)
  let backends: number[] = []
  await until(async () => (backends = await sleeping(db)).length > 0, `the server runs ${SLEEP}`)
  t.equal(backends.length, 1, 'one backend sleeps')
  const backend = backends[0] as number
  await new Promise((resolve) => setTimeout(resolve, 150))

  const aborted = performance.now()
  sent.req.destroy()
  const [stoppedMs, next] = await Promise.all([
    until(async () => (await sleeping(db)).length === 0, 'the aborted sleep stops on the server', 1000).then(
      () => performance.now() - aborted,
      () => Infinity
    ),
    servedAfter(url, '/pid')
  ])
  t.comment(`${label}: pg_sleep(10) aborted after 150 ms; stopped on the server ${Math.round(stoppedMs)} ms after the abort, next request served after ${Math.round(next.ms)} ms`)
  t.ok(stoppedMs < 1000, `the sleep stopped on the server within 1 s of the abort (${Math.round(stoppedMs)} ms)`)
  t.ok(next.ms < 1000, `the next request served within 1 s (${Math.round(next.ms)} ms)`)

  const { rows } = await db.admin<{ state: string }>('select state from pg_stat_activity where pid = $1', [backend])
  t.same(rows.map((row) => row.state), ['idle'], 'its backend was cancelled, not terminated: alive and idle')
  t.match(app.pg.stats(), { cancels: 1, cancelsSettled: 1, destroyed: { stuck: 0, error: 0 } }, 'the cancel settled within cancelGraceMs')
  await until(() => failures.length > 0, 'the handler sees its statement fail')
  t.match(failures, [{ code: 'FST_PG_CANCELLED', cause: { code: '57014' } }], 'the statement was cancelled by the server (57014), once')
  return { backend, stoppedMs, nextMs: next.ms, nextBody: next.body }
}
