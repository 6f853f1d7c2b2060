/**
 * Every option value either works or is refused at register time. Property-based: each case is
 * an options object drawn from a seeded generator (valid values, boundaries and garbage over
 * every option key, misspelt and unknown keys, and a route's `config.pgPool`), registered in a
 * fresh Fastify app against the test database. The property: `register`/`ready` (or adding the
 * route) fails with FST_PG_INVALID_OPTION and a message holding no password, or
 * `app.pg.query()` and a route's `req.db.query()` both answer `select 1`.
 *
 * The cases run in a child process, so a crash (an uncaught exception or unhandled rejection,
 * which the child's process-level listeners report) is counted against its case and the run
 * goes on in a new child from the next case. Replay a run with FUZZ_SEED=<seed> (the seed is in
 * the test name), and change its length with FUZZ_CASES.
 */
import { spawn } from 'node:child_process'
import net from 'node:net'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import pg from 'pg'
import pgPool, { type PgPoolOptions } from '../src/index.js'

const SEED = Number(process.env.FUZZ_SEED ?? 20_240_609)
const CASES = Number(process.env.FUZZ_CASES ?? 300)
/** A step of a case that takes longer than this has hung. */
const STEP_MS = 4000
/** Appears in option values; must never appear in an error message. */
const SECRET = 'hunter2-fuzz'
const MAX_MS = 2 ** 31 - 1

type Outcome = 'refused' | 'served' | 'broken' | 'uncoded' | 'leak' | 'crash'
interface Result { i: number, outcome: Outcome, options: string, detail: string }

/** mulberry32: a tiny seeded PRNG, so a case can be rebuilt from the seed and its index. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let r = Math.imul(a ^ (a >>> 15), 1 | a)
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296
  }
}

/** Shows a generated value, Symbols, BigInts, functions and nesting included. */
function show (value: unknown, depth = 0): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'bigint') return `${value}n`
  if (typeof value === 'symbol') return value.toString()
  if (typeof value === 'function') return /^class\b/.test(Function.prototype.toString.call(value)) ? '[class]' : `[function ${value.name}]`
  if (typeof value === 'number') return Object.is(value, -0) ? '-0' : String(value)
  if (value === null || typeof value !== 'object') return String(value)
  if (depth > 2) return '…'
  if (Array.isArray(value)) return `[${value.map((v) => show(v, depth + 1)).join(', ')}]`
  const proto = Object.getPrototypeOf(value) as object | null
  const name = proto === null ? 'null-proto ' : proto === Object.prototype ? '' : `${(proto.constructor as { name?: string } | undefined)?.name ?? '?'} `
  return `${name}{ ${Object.keys(value).map((k) => `${k}: ${show((value as Record<string, unknown>)[k], depth + 1)}`).join(', ')} }`
}

// ---------------------------------------------------------------- the generator

type Make = () => unknown
/** Values wrong in themselves for most options: wrong types, non-finite, negative, huge, nested. */
const GARBAGE: Make[] = [
  () => null, () => NaN, () => Infinity, () => -Infinity, () => -1, () => -0.5, () => 0, () => -0,
  () => 1.5, () => 70_000, () => 2 ** 31, () => 1e12, () => 1e21, () => Number.MAX_SAFE_INTEGER + 2,
  () => '', () => ' ', () => 'x', () => '5', () => '1e3', () => true, () => false,
  () => Symbol('fuzz'), () => 10n, () => ({}), () => [], () => [1], () => Object.create(null),
  () => new Date(0), () => ({ valueOf: () => 5, toString: () => '5' }), () => ({ a: { b: [1, { c: null }] } }),
  () => () => {}, () => class {}
]
const isFunction = (v: unknown): boolean => typeof v === 'function'
const isNonEmptyString = (v: unknown): boolean => typeof v === 'string' && v !== ''
const isPlainObject = (v: unknown): boolean => v !== null && typeof v === 'object' && !Array.isArray(v) &&
  [Object.prototype, null].includes(Object.getPrototypeOf(v))

interface KeySpec {
  /** Values that must work against the test server. */
  valid: Make[]
  /** Values wrong for this key in particular (besides GARBAGE). */
  wrong?: Make[]
  /**
   * Garbage this key cannot judge at register time, or that would legitimately point away from
   * the test server: left out of its draws.
   */
  skip?: (value: unknown) => boolean
  /** Not an accepted key (refused, misspelt, unknown): left out of the all-valid cases. */
  stranger?: true
}

const ms = (...values: Array<number | false>): Make[] => values.map((v) => () => v)
const fixed = (...values: unknown[]): Make[] => values.map((v) => () => v)

/**
 * A function is only judged when it is called (a password function returning a number, a
 * verify that never calls back, an onConnect that throws): such functions are the user's code,
 * not option values, and are not generated.
 */
const noFunctions = isFunction

function keySpecs (url: URL): Record<string, KeySpec> {
  return {
    // The plugin's own options.
    pingIdleMs: { valid: ms(0, 50, 1000, false, MAX_MS) },
    pingTimeoutMs: { valid: ms(100, 1000, MAX_MS) },
    acquireTimeoutMs: { valid: ms(1000, 2000, MAX_MS) },
    sessionReset: { valid: fixed('auto', 'always', false), wrong: fixed('never', 'AUTO') },
    maxWaiting: { valid: fixed(0, 5, Infinity) },
    underPressure: { valid: [() => false, () => ({}), () => ({ maxEventLoopDelay: 10_000 }), () => ({ exposeStatusRoute: true })] },
    maxLifetimeMs: { valid: ms(0, false, 1000, MAX_MS) },
    maxLifetimeJitter: { valid: fixed(0, 0.5, 0.999) },
    closeTimeoutMs: { valid: ms(0, 100, MAX_MS) },
    cancelGraceMs: { valid: ms(1, 100, MAX_MS) },
    statementTimeoutMs: { valid: ms(0, false, 5000, MAX_MS) },
    pgbouncer: { valid: fixed(true, false) },
    leakDetectionMs: { valid: ms(0, false, 10_000, MAX_MS) },
    pooling: { valid: fixed(true, false) },
    // pg-pool's.
    max: { valid: fixed(1, 3, 10) },
    min: { valid: fixed(0, 1) },
    idleTimeoutMillis: { valid: fixed(0, 100, 10_000, MAX_MS) },
    maxUses: { valid: fixed(1, 1000, Infinity) },
    maxLifetimeSeconds: { valid: fixed(0, 1, 2_147_483) },
    allowExitOnIdle: { valid: fixed(true, false) },
    connectionTimeoutMillis: { valid: ms(0, 5000, MAX_MS) },
    Client: { valid: [() => pg.Client], wrong: [() => function () {}, () => class { connect () {} }] },
    onConnect: { valid: [() => async () => {}, () => () => {}], skip: noFunctions },
    verify: { valid: [() => (_c: unknown, done: () => void) => done()], skip: noFunctions },
    // pg.Client's. The address (host, port, user, password, database) comes from the
    // connection string here, which overrides them: any string is harmless (see `pieces`).
    connectionString: {
      valid: [() => url.href, () => `${url.href}?application_name=fuzz-url`],
      wrong: [() => `postgres://u:${SECRET}@host:99999999/db`, () => `${url.href}?sslnegotiation=bogus`],
      // Another well-formed URL names another server.
      skip: isNonEmptyString
    },
    host: { valid: fixed(url.hostname) },
    port: { valid: fixed(Number(url.port), url.port) },
    user: { valid: fixed(decodeURIComponent(url.username)) },
    // (A wrong password is harmless only here, where the connection string's wins.)
    password: { valid: [() => decodeURIComponent(url.password), () => SECRET, () => () => decodeURIComponent(url.password)], skip: noFunctions },
    database: { valid: fixed(url.pathname.slice(1)) },
    // TLS to a server without it fails: a valid value for another server, not generated.
    ssl: { valid: fixed(false), skip: (v) => v === true || isPlainObject(v) },
    sslnegotiation: { valid: fixed('postgres'), wrong: fixed('direct', 'Postgres') },
    binary: { valid: fixed(true, false) },
    // The server decides which settings exist and how they are written: only well-formed
    // strings are generated (options.test.ts checks one holding a password is never shown).
    options: { valid: fixed('-c search_path=public', '--application_name=fuzz-opt', ''), skip: isNonEmptyString },
    client_encoding: { valid: fixed('utf8', 'UTF8'), wrong: fixed('latin1', 'klingon') },
    application_name: { valid: fixed('fuzz', '') },
    fallback_application_name: { valid: fixed('fuzz-fallback') },
    statement_timeout: { valid: ms(0, false, 10_000, MAX_MS), wrong: fixed('5s') },
    lock_timeout: { valid: ms(0, false, 10_000, MAX_MS) },
    idle_in_transaction_session_timeout: { valid: ms(0, false, 10_000, MAX_MS) },
    query_timeout: { valid: ms(0, false, 10_000, MAX_MS) },
    keepAlive: { valid: fixed(true, false) },
    keepAliveInitialDelayMillis: { valid: ms(0, 1000, MAX_MS) },
    types: {
      valid: [() => pg.types, () => new pg.TypeOverrides()],
      wrong: [() => ({ getTypeParser: () => 5 }), () => ({ getTypeParser: 'x' })]
    },
    stream: { valid: [() => () => new net.Socket()], wrong: [() => new net.Socket()], skip: noFunctions },
    enableChannelBinding: { valid: fixed(true, false) },
    scramMaxIterations: { valid: fixed(10_000, 100_000) },
    pipeline: { valid: fixed(false, true) },
    // pg keys the plugin does not support, and keys of other plugins.
    log: { valid: [() => () => {}], skip: noFunctions, stranger: true },
    Promise: { valid: fixed(Promise), stranger: true },
    native: { valid: fixed(true, false), stranger: true },
    pg: { valid: fixed(pg), stranger: true },
    name: { valid: fixed('primary'), stranger: true },
    connection: { valid: [() => new pg.Connection()], stranger: true },
    replication: { valid: fixed('database'), stranger: true },
    poolSize: { valid: fixed(5), stranger: true },
    sslmode: { valid: fixed('disable'), stranger: true },
    // Misspellings and strangers.
    pingIdelMs: { valid: ms(1000), stranger: true },
    maxWaitng: { valid: fixed(5), stranger: true },
    acquireTimeout: { valid: ms(1000), stranger: true },
    idleTimeoutMs: { valid: ms(1000), stranger: true },
    statementTimeout: { valid: ms(1000), stranger: true },
    connectionTimeoutMs: { valid: ms(1000), stranger: true },
    transaction: { valid: fixed(true), stranger: true },
    applicationName: { valid: fixed('x'), stranger: true },
    fuzzKey: { valid: fixed(1), stranger: true }
  }
}

/** A route's `config.pgPool`. */
const ROUTE_KEYS: Record<string, KeySpec> = {
  shedding: { valid: fixed(true, false) },
  transaction: {
    valid: [() => true, () => false, () => ({}), () => ({ isolationLevel: 'serializable' }), () => ({ readOnly: true, deferrable: false })],
    wrong: [() => ({ isolationLevel: 'chaos' }), () => ({ readOnly: 'yes' }), () => ({ isolation: 'serializable' })]
  },
  statementTimeoutMs: { valid: ms(0, false, 5000, MAX_MS) },
  transacton: { valid: fixed(true), stranger: true },
  shed: { valid: fixed(false), stranger: true }
}

interface Case { options: unknown, route: unknown }

function draw (rand: () => number, spec: KeySpec, pValid: number): unknown {
  const pick = <T>(list: T[]): T => list[Math.floor(rand() * list.length)] as T
  if (rand() < pValid) return pick(spec.valid)()
  const wrong = spec.wrong ?? []
  if (wrong.length > 0 && rand() < 0.3) return pick(wrong)()
  for (;;) {
    const value = pick(GARBAGE)()
    if (spec.skip?.(value) !== true) return value
  }
}

function pickKeys (rand: () => number, keys: string[], n: number): string[] {
  const pool = [...keys]
  const chosen: string[] = []
  while (chosen.length < n && pool.length > 0) chosen.push(pool.splice(Math.floor(rand() * pool.length), 1)[0] as string)
  return chosen
}

/** Every case of a run, drawn in order from the seed: case i is the same in any process. */
function generate (seed: number, count: number, dbUrl: string): Case[] {
  const rand = prng(seed)
  const url = new URL(dbUrl)
  const specs = keySpecs(url)
  const keys = Object.keys(specs).filter((k) => k !== 'connectionString')
  const address = ['host', 'port', 'user', 'password', 'database']
  const cases: Case[] = []
  for (let i = 0; i < count; i++) {
    // About a third of the cases hold only valid values, so working combinations are tried too.
    const pValid = rand() < 0.35 ? 1 : 0.5
    const options: Record<string, unknown> = {}
    if (rand() < 0.25) {
      // "Pieces": the address as separate options. Only values right for the test server, or
      // wrong in themselves (not a string: another host or user would just be unreachable).
      for (const key of address) {
        const spec = key === 'password' ? { valid: [() => decodeURIComponent(url.password), () => () => decodeURIComponent(url.password)], skip: noFunctions } : specs[key] as KeySpec
        options[key] = draw(rand, { ...spec, skip: (v) => typeof v === 'string' || v === null || (key === 'port' && typeof v === 'number' && Number.isInteger(v) && v > 0 && v < 65_536) || spec.skip?.(v) === true }, pValid === 1 ? 1 : 0.8)
      }
    } else {
      options.connectionString = draw(rand, specs.connectionString as KeySpec, pValid === 1 ? 1 : 0.85)
    }
    const others = keys.filter((k) => !(k in options) && (pValid < 1 || specs[k]?.stranger !== true))
    for (const key of pickKeys(rand, others, 1 + Math.floor(rand() * 4))) {
      options[key] = draw(rand, specs[key] as KeySpec, pValid)
    }
    // Keep a case cheap: a broken checkout gives up within a second unless the case set it.
    if (!('acquireTimeoutMs' in options)) options.acquireTimeoutMs = 1000
    let route: unknown
    if (rand() < 0.3) {
      const config: Record<string, unknown> = {}
      const routeKeys = Object.keys(ROUTE_KEYS).filter((k) => pValid < 1 || ROUTE_KEYS[k]?.stranger !== true)
      for (const key of pickKeys(rand, routeKeys, 1 + Math.floor(rand() * 2))) {
        config[key] = draw(rand, ROUTE_KEYS[key] as KeySpec, pValid === 1 ? 1 : 0.6)
      }
      route = rand() < 0.05 ? draw(rand, { valid: [] }, 0) : config
    }
    cases.push({ options, route })
  }
  return cases
}

// ---------------------------------------------------------------- one case (in the child)

function within<T> (promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${STEP_MS} ms`)), STEP_MS)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function leaks (message: string, dbUrl: string): boolean {
  const password = decodeURIComponent(new URL(dbUrl).password)
  return message.includes(SECRET) || message.includes(`:${password}@`) || message.includes(dbUrl)
}

type Verdict = Omit<Result, 'i' | 'options'>

/** Registers, adds the route, starts; a refusal is judged by its code and message. */
async function start (app: FastifyInstance, c: Case, dbUrl: string): Promise<Verdict | undefined> {
  try {
    await within((async () => { await app.register(pgPool, c.options as PgPoolOptions) })(), 'register')
    const config = c.route === undefined ? {} : { config: { pgPool: c.route as never } }
    app.get('/q', config, async (req) => (await req.db.query('select 1 as n')).rows[0])
    await within(Promise.resolve(app.ready()), 'ready')
    return undefined
  } catch (error) {
    const { code, message } = error as { code?: unknown, message?: unknown }
    const text = String(message)
    if (leaks(text, dbUrl)) return { outcome: 'leak', detail: text }
    if (code === 'FST_PG_INVALID_OPTION') return { outcome: 'refused', detail: text }
    return { outcome: 'uncoded', detail: `${String(code)}: ${text}` }
  }
}

/** Accepted: `select 1` through the pool (twice: a new and a reused connection) and a route. */
async function serve (app: FastifyInstance): Promise<Verdict> {
  try {
    for (const step of ['pool', 'pool again'] as const) {
      const { rows } = await within(app.pg.query('select 1 as n'), step)
      if (Number(rows[0]?.n) !== 1) throw new Error(`${step}: select 1 gave ${show(rows)}`)
    }
    const res = await within(app.inject('/q'), 'route')
    if (res.statusCode !== 200 || Number(res.json().n) !== 1) throw new Error(`route: ${res.statusCode} ${res.body}`)
    return { outcome: 'served', detail: '' }
  } catch (error) {
    const { code, message } = error as { code?: unknown, message?: unknown }
    return { outcome: 'broken', detail: `${String(code)}: ${String(message)}` }
  }
}

async function runCase (c: Case, dbUrl: string): Promise<Verdict> {
  const app = Fastify({ logger: false })
  const verdict = await start(app, c, dbUrl) ?? await serve(app)
  try {
    await within(Promise.resolve(app.close()), 'close')
  } catch (error) {
    if (verdict.outcome === 'served' || verdict.outcome === 'refused') return { outcome: 'broken', detail: String(error) }
  }
  return verdict
}

/** The child: runs cases FUZZ_FROM.. and prints one `FUZZ {json}` line per case. */
async function worker (): Promise<void> {
  const dbUrl = process.env.FUZZ_DB_URL as string
  const from = Number(process.env.FUZZ_FROM)
  const cases = generate(SEED, CASES, dbUrl)
  const send = (message: object): void => { process.stdout.write(`FUZZ ${JSON.stringify(message)}\n`) }
  let current = from
  // Writes to a pipe are synchronous on Linux: the line is out before the exit.
  const crash = (kind: string) => (error: unknown) => {
    send({ type: 'crash', i: current, detail: `${kind}: ${String((error as Error)?.stack ?? error)}` })
    process.exit(1)
  }
  process.on('uncaughtException', crash('uncaught exception'))
  process.on('unhandledRejection', crash('unhandled rejection'))
  // A value past Node's timer limit fires after 1 ms instead: an accepted value misused.
  let overflow = ''
  process.on('warning', (warning) => {
    if (warning.name === 'TimeoutOverflowWarning') overflow = warning.message
  })
  for (let i = from; i < cases.length; i++) {
    current = i
    send({ type: 'start', i })
    overflow = ''
    const result = await runCase(cases[i] as Case, dbUrl)
    await new Promise((resolve) => setImmediate(resolve)) // let a deferred warning arrive
    if (overflow !== '' && result.outcome !== 'broken') Object.assign(result, { outcome: 'broken', detail: `accepted, then a timer overflowed: ${overflow}` })
    send({ type: 'result', i, ...result })
  }
  send({ type: 'done' })
  process.exit(0)
}

// ---------------------------------------------------------------- the test (the parent)

/** Runs every case, a new child after each crash; a child silent for too long is killed. */
async function runAll (dbUrl: string): Promise<Result[]> {
  const cases = generate(SEED, CASES, dbUrl)
  const results: Result[] = []
  const record = (i: number, outcome: Outcome, detail: string): void => {
    if (results[i] === undefined) results[i] = { i, outcome, detail, options: `${show(cases[i]?.options)}${cases[i]?.route === undefined ? '' : ` route ${show(cases[i]?.route)}`}` }
  }
  let from = 0
  while (from < CASES) {
    // Out of tap's coverage and process tracking, as runNode does (test/helpers/util.ts).
    const unset = ['NODE_OPTIONS', 'NODE_V8_COVERAGE'].flatMap((name) => ['-u', name])
    const child = spawn('env', [...unset, process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url)], {
      env: { ...process.env, FUZZ_WORKER: '1', FUZZ_SEED: String(SEED), FUZZ_CASES: String(CASES), FUZZ_FROM: String(from), FUZZ_DB_URL: dbUrl },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => { stderr = (stderr + chunk.toString()).slice(-4000) })
    let current = from
    let watchdog: NodeJS.Timeout | undefined
    const arm = (): void => {
      clearTimeout(watchdog)
      watchdog = setTimeout(() => {
        record(current, 'broken', 'the case hung (child killed)')
        child.kill('SIGKILL')
      }, 6 * STEP_MS)
    }
    arm()
    const lines = createInterface({ input: child.stdout })
    lines.on('line', (line) => {
      if (!line.startsWith('FUZZ ')) return
      const message = JSON.parse(line.slice(5)) as { type: string, i: number, outcome: Outcome, detail: string }
      arm()
      if (message.type === 'start') current = message.i
      else if (message.type === 'result') record(message.i, message.outcome, message.detail)
      else if (message.type === 'crash') record(message.i, 'crash', message.detail)
    })
    await new Promise<void>((resolve) => child.on('close', () => resolve()))
    clearTimeout(watchdog)
    if (results[current] === undefined) record(current, 'crash', `the child exited: ${stderr.trim().split('\n').slice(-3).join(' | ')}`)
    from = current + 1
  }
  return results
}

if (process.env.FUZZ_WORKER === '1') {
  await worker()
} else {
  const { default: t } = await import('tap')
  const { setupDatabase } = await import('./helpers/postgres.js')
  // 300 cases, each a child app: seconds alone, longer on a loaded machine than tap's 30 s default.
  t.setTimeout(180_000)
  const db = await setupDatabase(t)

  t.test(`every option value works or is refused at register time (seed ${SEED}, ${CASES} cases; replay: FUZZ_SEED=${SEED} FUZZ_CASES=${CASES})`, async (t) => {
    const started = Date.now()
    const results = await runAll(db.url)
    const count = (outcome: Outcome): number => results.filter((r) => r.outcome === outcome).length
    t.comment(`seed ${SEED}: ${results.length} cases in ${Date.now() - started} ms: ` +
      (['crash', 'broken', 'uncoded', 'leak', 'refused', 'served'] as const).map((o) => `${o} ${count(o)}`).join(', '))
    const cases = generate(SEED, CASES, db.url)
    const servedKeys = new Set(results.filter((r) => r.outcome === 'served').flatMap((r) => Object.keys(cases[r.i]?.options as object)))
    const accepted = Object.entries(keySpecs(new URL(db.url))).filter(([, spec]) => spec.stranger !== true).map(([key]) => key)
    t.comment(`accepted keys in no served case: ${accepted.filter((k) => !servedKeys.has(k)).join(', ') || 'none'}`)
    for (const outcome of ['crash', 'broken', 'uncoded', 'leak'] as const) {
      const failed = results.filter((r) => r.outcome === outcome)
      for (const r of failed.slice(0, 50)) t.comment(`${outcome} #${r.i}: ${r.options} => ${r.detail.replace(/\s+/g, ' ').slice(0, 300)}`)
      t.equal(failed.length, 0, `${outcome}: ${failed.length}`)
    }
    t.equal(results.length, CASES, 'every case ran')
    t.ok(count('served') > CASES / 10, 'valid combinations are tried and served')
    t.ok(count('refused') > CASES / 10, 'wrong values are tried and refused')
  })
}
