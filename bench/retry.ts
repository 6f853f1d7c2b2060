/**
 * How often does `retry: true` apply a write twice? A route inserts one row with a key of its
 * own (no unique constraint, so a second insert of a key shows), through a TCP proxy that resets
 * every connection every `BENCH_RESET_MS`. A statement whose connection dies after the server ran
 * it, but before its reply arrived, was applied; `retry` sends it once more.
 *
 * Contenders, one after the other against the same server, proxy and app:
 *   request.db, retry   `req.db.query({ text, values, retry: true })`
 *   fastify.pg, retry   `app.pg.query({ text, values, retry: true })`
 *   request.db, plain   the same insert without retry
 *   fastify.pg, plain
 * The load comes from a child process (this file, `client` mode): `BENCH_REQUESTS` POSTs over
 * `BENCH_CONNECTIONS` keep-alive sockets, stopped after `BENCH_LIMIT_S`, each with its own key.
 * Counted afterwards on the server: keys applied twice, and which answers were in fact applied.
 * Not part of `npm test`: `npm run bench:retry`.
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_REQUESTS (per contender,
 * default 4000), BENCH_CONNECTIONS (default 20), BENCH_RESET_MS (default 500), BENCH_LIMIT_S
 * (per contender, default 30), BENCH_MAX (pool size, default 10).
 */
import { execFile } from 'node:child_process'
import http from 'node:http'
import { promisify } from 'node:util'

const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 4000)
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 20)
const RESET_MS = Number(process.env.BENCH_RESET_MS ?? 500)
const LIMIT_S = Number(process.env.BENCH_LIMIT_S ?? 30)
const MAX = Number(process.env.BENCH_MAX ?? 10)
const APP_NAME = 'fpp-bench-retry'
const TABLE = 'fpp_bench_retry'
const INSERT = `insert into ${TABLE} (k) values ($1)`

/** What the client saw: each request's status in order (0: no answer, -1: not sent), and the load's duration. */
interface Load { statuses: number[], ms: number }

/** `client` mode: the load, in its own process. Prints a `Load` as JSON. */
async function client (base: string, prefix: string, requests: number, connections: number, limitMs: number): Promise<void> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections })
  const statuses: number[] = new Array(requests).fill(-1)
  const started = Date.now()
  const deadline = started + limitMs
  const post = (url: string): Promise<number> => new Promise((resolve) => {
    const req = http.request(url, { method: 'POST', agent, timeout: 10_000 }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
      res.on('error', () => resolve(0))
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(0))
    req.end()
  })
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < requests && Date.now() < deadline) {
      const i = next++
      statuses[i] = await post(`${base}/${prefix}-${i}`)
    }
  }
  await Promise.all(Array.from({ length: connections }, worker))
  agent.destroy()
  const load: Load = { statuses, ms: Date.now() - started }
  process.stdout.write(JSON.stringify(load))
}

interface Row {
  contender: string
  sent: number
  ok: number
  okTwice: number
  /** Acknowledged but not in the table: a lost write (should never happen). */
  okLost: number
  fiveXX: number
  fiveXXApplied: number
  fiveXXTwice: number
  fiveXXCodes: Map<number, number>
  /** The 5xx by error: how many, and how many of those were applied. */
  fiveXXWhy: Map<string, { n: number, applied: number }>
  other: number
  otherApplied: number
  resets: number
  seconds: number
}

async function main (): Promise<void> {
  const { default: Fastify } = await import('fastify')
  const { default: pg } = await import('pg')
  const { TcpProxy } = await import('../test/helpers/proxy.js')
  const { database, pgPool, table } = await import('./lib.js')

  const db = await database()
  const admin = new pg.Client({ connectionString: db.url })
  await admin.connect()
  await admin.query(`drop table if exists ${TABLE}`)
  await admin.query(`create table ${TABLE} (k text not null)`)
  const proxy = await TcpProxy.start(Number(new URL(db.url).port))
  const through = new URL(db.url)
  through.port = String(proxy.port)

  const app = Fastify({ logger: false })
  await app.register(pgPool, { connectionString: through.toString(), application_name: APP_NAME, max: MAX })
  app.post<{ Params: { key: string } }>('/db-retry/:key', async (req) => (await req.db.query({ text: INSERT, values: [req.params.key], retry: true })).rowCount)
  app.post<{ Params: { key: string } }>('/pool-retry/:key', async (req) => (await app.pg.query({ text: INSERT, values: [req.params.key], retry: true })).rowCount)
  app.post<{ Params: { key: string } }>('/db-plain/:key', async (req) => (await req.db.query(INSERT, [req.params.key])).rowCount)
  app.post<{ Params: { key: string } }>('/pool-plain/:key', async (req) => (await app.pg.query(INSERT, [req.params.key])).rowCount)
  // Why each failed request failed, by key: the error's code and syscall (pg's socket errors:
  // `write` means the statement never left the app), or its message.
  const failures = new Map<string, string>()
  app.addHook('onError', async (req, _reply, error) => {
    const { code, syscall } = error as { code?: string, syscall?: string }
    failures.set((req.params as { key: string }).key, code === undefined ? error.message : syscall === undefined ? code : `${code} (${syscall})`)
  })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })

  const run$ = promisify(execFile)
  /** Each request's key is `${prefix}-${i}`. */
  const load = async (path: string, prefix: string, requests: number): Promise<Load> => {
    const { stdout } = await run$(process.execPath, [
      '--import', 'tsx', import.meta.filename, 'client', `${base}/${path}`, prefix, String(requests), String(CONNECTIONS), String(LIMIT_S * 1000)
    ], { maxBuffer: 64 * 1024 * 1024 })
    return JSON.parse(stdout)
  }

  await load('pool-plain', 'warm-up', 200) // without faults
  const loads: Array<{ contender: string, path: string, resets: number, result: Load }> = []
  for (const [contender, path] of [
    ['request.db, retry', 'db-retry'],
    ['fastify.pg, retry', 'pool-retry'],
    ['request.db, plain', 'db-plain'],
    ['fastify.pg, plain', 'pool-plain']
  ] as const) {
    let resets = 0
    const timer = setInterval(() => { proxy.reset(); resets++ }, RESET_MS)
    let result: Load
    try {
      result = await load(path, path, REQUESTS)
    } finally {
      clearInterval(timer)
    }
    loads.push({ contender, path, resets, result })
  }
  await app.close()
  await proxy.close()
  // Every session of the app has ended: whatever a reset backend had received, it has run.
  await sessionsEnded(admin)

  const rows: Row[] = []
  for (const { contender, path, resets, result } of loads) {
    const { rows: counts } = await admin.query<{ k: string, n: number }>(
      `select k, count(*)::int as n from ${TABLE} where k like $1 group by k`, [`${path}-%`])
    const applied = new Map(counts.map(({ k, n }) => [k, n]))
    const times = (i: number): number => applied.get(`${path}-${i}`) ?? 0
    const row: Row = { contender, sent: 0, ok: 0, okTwice: 0, okLost: 0, fiveXX: 0, fiveXXApplied: 0, fiveXXTwice: 0, fiveXXCodes: new Map(), fiveXXWhy: new Map(), other: 0, otherApplied: 0, resets, seconds: result.ms / 1000 }
    result.statuses.forEach((status, i) => {
      if (status === -1) return
      row.sent++
      const n = times(i)
      if (status >= 200 && status < 300) {
        row.ok++
        if (n > 1) row.okTwice++
        if (n === 0) row.okLost++
      } else if (status >= 500) {
        row.fiveXX++
        row.fiveXXCodes.set(status, (row.fiveXXCodes.get(status) ?? 0) + 1)
        if (n > 0) row.fiveXXApplied++
        const why = failures.get(`${path}-${i}`) ?? '?'
        const tally = row.fiveXXWhy.get(why) ?? { n: 0, applied: 0 }
        tally.n++
        if (n > 0) tally.applied++
        row.fiveXXWhy.set(why, tally)
        if (n > 1) row.fiveXXTwice++
      } else {
        row.other++
        if (n > 0) row.otherApplied++
      }
    })
    rows.push(row)
  }
  await admin.query(`drop table ${TABLE}`)
  await admin.end()
  await db.stop()

  console.log(`\nretry under resets: ${REQUESTS} POSTs per contender over ${CONNECTIONS} connections (at most ${LIMIT_S} s), pool max ${MAX}, every connection reset (RST) every ${RESET_MS} ms; one single-row insert per request\n`)
  console.log(table(
    ['contender', 'sent', 's', 'resets', '2xx', '2xx applied twice', '2xx not applied', '5xx', '5xx applied', '5xx applied twice', '5xx by status', 'no answer or other (applied)'],
    ['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---', '---:'],
    rows.map((r) => [
      r.contender, r.sent, r.seconds.toFixed(1), r.resets, r.ok, r.okTwice, r.okLost, r.fiveXX, r.fiveXXApplied, r.fiveXXTwice,
      [...r.fiveXXCodes].sort(([a], [b]) => a - b).map(([code, n]) => `${code}: ${n}`).join(', ') || '—',
      `${r.other} (${r.otherApplied})`
    ])
  ))
  console.log('\n5xx by error, and how many of them were applied:\n')
  console.log(table(['contender', 'error', '5xx', 'applied'], ['---', '---', '---:', '---:'], rows.flatMap((r) =>
    [...r.fiveXXWhy].sort(([a], [b]) => a.localeCompare(b)).map(([why, { n, applied }]) => [r.contender, why, n, applied]))))
}

/** Until no session of the app is left on the server (bounded: 10 s). */
async function sessionsEnded (admin: { query (text: string, values: unknown[]): Promise<{ rowCount: number | null }> }): Promise<void> {
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    const { rowCount } = await admin.query('select 1 from pg_stat_activity where application_name = $1', [APP_NAME])
    if (rowCount === 0) return
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error('sessions of the app are still open on the server after 10 s')
}

if (process.argv[2] === 'client') {
  const [base, prefix, requests, connections, limitMs] = process.argv.slice(3)
  await client(base!, prefix!, Number(requests), Number(connections), Number(limitMs))
} else {
  await main()
}
