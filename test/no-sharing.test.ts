/**
 * A connection never serves two requests at once, even when requests are aborted while their
 * queries run; and a checkout still waiting when its request ends takes nothing.
 */
import t from 'tap'
import { assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred, listen, send, until } from './helpers/util.js'

const db = await setupDatabase(t)
await db.admin('create table marks (note text not null)')

t.test('backend pids: no two requests ever use one backend at the same time', async (t) => {
  // Everyone queues here: this test is about sharing, not shedding.
  const app = await buildApp(t, db, { max: 3, acquireTimeoutMs: 10_000, maxWaiting: Infinity, underPressure: false })
  interface Span { request: number, pid: number, from: number, to: number }
  const spans: Span[] = []
  const refused: string[] = []
  app.get('/:n', async (req) => {
    const request = Number((req.params as { n: string }).n)
    // Each statement reports the backend it ran on and the server-side clock around it.
    const span = async (sql: string): Promise<void> => {
      const { rows: [row] } = await req.db.query<{ pid: number, from: string, to: string }>(
        `select pg_backend_pid() as pid, extract(epoch from clock_timestamp()) * 1e6 as from, ${sql},
                extract(epoch from clock_timestamp()) * 1e6 as to`
      )
      spans.push({ request, pid: row!.pid, from: Number(row!.from), to: Number(row!.to) })
    }
    try {
      await span('pg_sleep(0.005)')
      await span('pg_sleep(0.01)')
      await span('1')
    } catch (error) {
      refused.push((error as { code: string }).code)
    }
    return 'ok'
  })
  const url = await listen(app)

  const total = 30
  const requests = Array.from({ length: total }, (_, n) => send(`${url}/${n}`))
  // Abort every third request while its statements are still running.
  await Promise.all(requests.map(async (sent, n) => {
    if (n % 3 === 0) {
      await until(() => spans.some((s) => s.request === n), `request ${n} ran a statement`)
      sent.req.destroy()
    }
    return await sent.done
  }))
  await assertReturned(t, app, db)

  const byPid = new Map<number, Span[]>()
  for (const s of spans) byPid.set(s.pid, [...(byPid.get(s.pid) ?? []), s])
  t.ok(byPid.size <= 3, 'at most max backends were used')
  let overlaps = 0
  for (const list of byPid.values()) {
    list.sort((a, b) => a.from - b.from)
    for (let i = 1; i < list.length; i++) {
      const prev = list[i - 1]!
      const cur = list[i]!
      if (cur.request !== prev.request && cur.from < prev.to) overlaps++
    }
    // Statements of one request on one backend form one unbroken run: no other request in between.
    const order = list.map((s) => s.request)
    const runs = order.filter((r, i) => i === 0 || order[i - 1] !== r)
    t.equal(new Set(runs).size, runs.length, 'each request held its backend for one unbroken stretch')
  }
  t.equal(overlaps, 0, 'no two requests overlapped on one backend')
  // The statement running when the client left is cancelled; any after it is refused.
  t.ok(refused.every((code) => code === 'FST_PG_REQUEST_ENDED' || code === 'FST_PG_CANCELLED'), `aborted requests got the coded errors (${[...new Set(refused)].join(', ')})`)
  t.ok(spans.length >= total, 'the statements ran')
})

t.test('a checkout still waiting when its request ends is abandoned', async (t) => {
  const app = await buildApp(t, db, { max: 1, acquireTimeoutMs: 10_000 })
  const LOCK = 99
  await db.admin('select pg_advisory_lock($1)', [LOCK])
  const holding = deferred()
  const waiterError = deferred<unknown>()
  app.get('/hold', async (req) => {
    const pending = req.db.query('select pg_advisory_xact_lock($1)', [LOCK])
    holding.resolve()
    await pending
    return 'held'
  })
  app.get('/wait', async (req) => {
    try {
      await req.db.query("insert into marks (note) values ('abandoned request ran')")
    } catch (error) {
      waiterError.resolve(error)
    }
    return 'waited'
  })
  const url = await listen(app)

  const holder = send(`${url}/hold`)
  await holding.promise
  const waiter = send(`${url}/wait`)
  await until(() => app.pg.stats().waiting === 1, 'the second request waits for the only connection')
  waiter.req.destroy()
  await until(() => app.pg.stats().waiting === 0, 'the abandoned checkout left the queue')
  t.equal(((await waiterError.promise) as { code: string }).code, 'FST_PG_REQUEST_ENDED')

  await db.admin('select pg_advisory_unlock($1)', [LOCK])
  const held = await holder.done
  t.equal((held as { status: number }).status, 200)
  await assertReturned(t, app, db)
  const { rows } = await db.admin('select * from marks')
  t.same(rows, [], 'the abandoned request never ran its query')
  t.equal(app.pg.stats().total, 1, 'no connection was opened for it')
})
