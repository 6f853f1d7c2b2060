/**
 * `sessionReset: 'auto'` reads each statement's text to know whether the session may have changed.
 * The alternative for temporary objects is to ask the server when the connection returns. This
 * measures both, in the same run:
 * - the text check, in-process: time per statement of `changesSession` on typical statements,
 *   against the two regular expressions it replaced (5a23047);
 * - the server-side check: a `select 1` route that also sends the check query (what it would
 *   cost on every return) against the plain route and `sessionReset: 'always'` (a DISCARD ALL on
 *   every return), with autocannon.
 * `npm run build && npx tsx bench/session-check.ts` (BENCH_DURATION, BENCH_ROUNDS, DATABASE_URL).
 */
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import { compare, database, fixed, listen, table, DURATION, ROUNDS, pgPool } from './lib.js'

// The built code, as users run it (see lib.ts).
const built = pathToFileURL(resolve(import.meta.dirname, '../dist/esm/session.js')).href
const { changesSession } = await import(built) as typeof import('../src/session.js')

const CONNECTIONS = 20
const CHECK = 'select pg_my_temp_schema() <> 0 and exists (select 1 from pg_class where relnamespace = pg_my_temp_schema()) as dirty'

const statements: Array<[string, string]> = [
  ['lookup by key (no candidate word)', 'select id, email, display_name, created_at from users where id = $1'],
  ['upsert (… do update set …)', 'insert into user_settings (user_id, key, value, updated_at) values ($1, $2, $3, now()) on conflict (user_id, key) do update set value = excluded.value, updated_at = excluded.updated_at returning id'],
  ['1 KB report with offset', `select o.id, o.created_at, c.name, sum(l.quantity * l.unit_price) as total, count(*) as lines
    from orders o join customers c on c.id = o.customer_id join order_lines l on l.order_id = o.id
    where o.created_at >= $1 and o.created_at < $2 and o.status = any($3) and c.region = $4
    group by o.id, o.created_at, c.name having sum(l.quantity * l.unit_price) > $5
    order by total desc, o.created_at desc limit 50 offset $6`.repeat(2)],
  ['tenant: set_config(..., true)', "select set_config('app.tenant_id', $1, true)"],
  ['create temp table (flagged)', 'create temp table import_rows (id int, payload jsonb) on commit drop']
]

// The detection before 5a23047, for comparison.
const STARTS = /(?:^|;)\s*(?:(?:--[^\n]*\n|\/\*[\s\S]*?\*\/)\s*)*(?:set|reset|listen|prepare|declare|load|discard)\b/i
const ANYWHERE = /\b(?:set_config|pg_(?:try_)?advisory_lock(?:_shared)?)\b|\btemp(?:orary)?\s+(?:table|view|sequence)\b/i
const regexes = (text: string): boolean => STARTS.test(text) || ANYWHERE.test(text)

/** Nanoseconds per call, best of 5 runs of `n` calls. */
function time (fn: (text: string) => boolean, text: string, n = 100_000): number {
  let best = Infinity
  let sink = 0
  for (let run = 0; run < 5; run++) {
    const start = process.hrtime.bigint()
    for (let i = 0; i < n; i++) if (fn(text)) sink++
    best = Math.min(best, Number(process.hrtime.bigint() - start) / n)
  }
  if (sink < 0) console.log(sink)
  return best
}

function textCheck (): string {
  const rows = statements.map(([name, text]) => [name, text.length, fixed(time(regexes, text)), fixed(time(changesSession, text)), String(changesSession(text))])
  return '### Text check: time per statement (in-process, best of 5 × 100 000 calls)\n\n' +
    table(['statement', 'chars', 'two regexes (ns)', 'tokens (ns)', 'flagged'], ['---', '---:', '---:', '---:', '---'], rows)
}

async function serverCheck (connectionString: string): Promise<string> {
  const apps: FastifyInstance[] = []
  const contenders: Array<{ name: string, url: string }> = []
  const variants: Array<[string, 'auto' | 'always', string[]]> = [
    ['`select 1` (baseline: text check only)', 'auto', ['select 1']],
    ['`select 1` + the server-side check', 'auto', ['select 1', CHECK]],
    ["`select 1` with `sessionReset: 'always'`", 'always', ['select 1']]
  ]
  for (const [name, sessionReset, sqls] of variants) {
    const app = Fastify()
    await app.register(pgPool, { connectionString, max: 10, sessionReset })
    app.get('/', async (req) => {
      let rows = 0
      for (const sql of sqls) rows += (await req.db.query(sql)).rowCount ?? 0
      return rows
    })
    apps.push(app)
    contenders.push({ name, url: await listen(app) })
  }
  const results = await compare(contenders, CONNECTIONS)
  for (const app of apps) await app.close()
  const base = results.get(contenders[0]!.name)!
  const rows = contenders.map(({ name }) => {
    const r = results.get(name)!
    const extraUs = (1 / r.rps - 1 / base.rps) * 1e6
    return [name, fixed(r.rps), fixed(r.rps / base.rps, 3), name === contenders[0]!.name ? '—' : fixed(extraUs), r.p50, r.p99]
  })
  return `### Server-side check on every return (pool max 10, ${CONNECTIONS} connections, median of ${ROUNDS} interleaved ${DURATION} s rounds)\n\n` +
    table(['route', 'req/s', 'ratio', 'machine time per request (µs, vs baseline)', 'p50 (ms)', 'p99 (ms)'], ['---', '---:', '---:', '---:', '---:', '---:'], rows)
}

console.log(textCheck() + '\n')
const db = await database()
console.log(await serverCheck(db.url))
await db.stop()
