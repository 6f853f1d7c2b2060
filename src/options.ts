import type { Client, ClientBase, ClientConfig, PoolConfig, QueryConfig } from 'pg'
import type { FastifyUnderPressureOptions as UnderPressureOptions } from '@fastify/under-pressure'
import { PgInvalidOptionError } from './errors.js'

/** Options of the plugin itself; every `pg.PoolConfig` field is accepted beside them. */
export interface PgPoolPluginOptions {
  /**
   * A connection that sat idle in the pool at least this long is pinged (one empty-query round
   * trip) before it is handed out; a dead one is replaced without the caller noticing.
   * `0` pings every reused connection, `false` never pings. New connections are never pinged.
   * @default 1000
   */
  pingIdleMs?: number | false
  /**
   * A ping that has not answered within this many milliseconds counts as dead.
   * @default 1000
   */
  pingTimeoutMs?: number
  /**
   * Deadline for a whole checkout: waiting for a free slot, connecting, pinging and replacing
   * dead connections. Past it the request fails with `FST_PG_ACQUIRE_TIMEOUT` (HTTP 503).
   * @default 2000
   */
  acquireTimeoutMs?: number
  /**
   * How a connection's session is cleaned before the next request gets it (`DISCARD ALL`: SET,
   * SET ROLE, search_path, set_config, temporary tables, LISTEN, advisory locks, prepared
   * statements). `'auto'`: when a statement may have changed it, read from the text of every
   * statement sent (through `request.db`, `connection()` and `pool.connect()` clients alike);
   * `'always'`: after every checkout; `false`: never (you own the session state).
   * @default 'auto'
   */
  sessionReset?: 'auto' | 'always' | false
  /**
   * Checkouts allowed to wait for a connection; one more fails at once with
   * `FST_PG_QUEUE_FULL` (HTTP 503). `Infinity`: no bound. The default, two rounds of the pool,
   * keeps every connection busy through bursts while bounding the wait to about two query times.
   * @default 2 * max
   */
  maxWaiting?: number
  /**
   * @fastify/under-pressure options (event loop delay, heap, `exposeStatusRoute`, ...). The plugin
   * registers under-pressure with them and feeds it the pool's saturation, so saturated requests
   * get their 503 in `onRequest`, before body parsing or the handler. `false`: not registered
   * (see the README to combine it with an under-pressure you register yourself).
   * @default {}
   */
  underPressure?: UnderPressureOptions | false
  /**
   * A connection older than this is never handed out again: closed when idle, or when it comes
   * back if in use (SQLAlchemy's `pool_recycle`, HikariCP's `maxLifetime`). Keep it below the
   * shortest idle or session timeout between the app and the database (PgBouncer
   * `server_lifetime`, cloud proxies). `0` or `false`: no limit. pg-pool's `maxLifetimeSeconds`
   * is used when this is not set.
   * @default 1800000 (30 minutes)
   */
  maxLifetimeMs?: number | false
  /**
   * Each connection's lifetime is shortened by a random fraction up to this, so connections
   * opened together are not all replaced together.
   * @default 0.1
   */
  maxLifetimeJitter?: number
  /**
   * On `app.close()`, how long to wait for checked-out connections to come back before they are
   * destroyed.
   * @default 10000
   */
  closeTimeoutMs?: number
  /**
   * Statements running longer than this are cancelled by the server (SQLSTATE 57014). A route
   * can set its own (`config.pgPool.statementTimeoutMs`). Directly on PostgreSQL the plugin-wide
   * value is a connection parameter (free); a route's own value, or any value behind PgBouncer,
   * travels with the statement in the same round trip, local to its transaction. `0` or `false`:
   * no timeout from the plugin (the server's setting applies).
   * @default 0
   */
  statementTimeoutMs?: number | false
  /**
   * The database is reached through PgBouncer in transaction mode (or a pooler like it): named
   * prepared statements are sent unnamed, statements that would leave session state are refused
   * with `FST_PG_SESSION_STATE` unless inside a transaction, no connection parameter PgBouncer
   * refuses is sent, and there is no session reset (there is no session to reset).
   * @default false
   */
  pgbouncer?: boolean
  /**
   * A checkout held longer than this logs one warning with its route, method, request id, held
   * time and the stack where it was checked out. Connections of a request are returned when it
   * ends, so this finds requests that do not end (a hung handler holds its connection as long as
   * its client waits) and `pool.connect()` clients never released. Off by default: the stack is
   * captured at every checkout while this is on (about 13 µs each, measured in bench/).
   * `0` or `false`: off.
   * @default 0
   */
  leakDetectionMs?: number | false
  /**
   * `false`: no pool. Each request opens its own connection on first use and closes it when it
   * ends (SQLAlchemy's NullPool), for use behind an external pooler or in short-lived processes.
   * Every other guarantee holds; `max` still bounds the connections open at once.
   * @default true
   */
  pooling?: boolean
}

/**
 * pg's query config, plus `retry`: the statement is safe to run twice (a read, an idempotent
 * write). After a connection-class error it is sent once more on a fresh connection, unless it
 * ran inside a transaction. Off by default: a statement whose connection died may have run.
 */
export interface PgQueryConfig<I = any[]> extends QueryConfig<I> {
  retry?: boolean
}

/** Everything `fastify.register(pgPool, opts)` accepts. */
export type PgPoolOptions = PoolConfig & PgPoolPluginOptions

/** Options after defaults and validation; what the pool works from. */
export interface ResolvedOptions {
  /** Passed to every `new Client(...)`. Holds the password: kept private to the pool. */
  readonly client: ClientConfig
  readonly Client: new (config: ClientConfig) => Client
  readonly max: number
  readonly min: number
  readonly idleTimeoutMs: number
  readonly maxUses: number
  readonly maxLifetimeMs: number
  readonly maxLifetimeJitter: number
  readonly allowExitOnIdle: boolean
  readonly connectTimeoutMs: number
  /** `Infinity` when pinging is off. */
  readonly pingIdleMs: number
  readonly pingTimeoutMs: number
  readonly acquireTimeoutMs: number
  readonly closeTimeoutMs: number
  readonly maxWaiting: number
  readonly sessionReset: 'auto' | 'always' | false
  /** 0: none. */
  readonly statementTimeoutMs: number
  readonly pgbouncer: boolean
  readonly pooling: boolean
  /** 0: off. */
  readonly leakDetectionMs: number
  readonly underPressure: UnderPressureOptions | false
  readonly onConnect: ((client: ClientBase) => void | Promise<void>) | undefined
}

export const defaults = {
  max: 10,
  min: 0,
  idleTimeoutMillis: 10_000,
  pingIdleMs: 1000,
  pingTimeoutMs: 1000,
  acquireTimeoutMs: 2000,
  closeTimeoutMs: 10_000,
  maxLifetimeMs: 30 * 60_000,
  maxLifetimeJitter: 0.1,
  // TCP keepalive: the first probe after 10 s of silence keeps NAT and load-balancer flow
  // tables warm (their idle timeouts are minutes: 350 s on AWS NLB, 4 min on Azure) and lets the
  // kernel notice a dead peer on its own; pings at checkout catch the rest.
  keepAlive: true,
  keepAliveInitialDelayMillis: 10_000,
  applicationName: 'fastify-pg-pool',
  leakDetectionMs: 0
} as const

// Pool-level keys: consumed here, never passed to a Client.
const POOL_KEYS = new Set([
  'max', 'min', 'idleTimeoutMillis', 'log', 'Promise', 'allowExitOnIdle', 'maxUses',
  'maxLifetimeSeconds', 'Client', 'onConnect', 'verify', 'connectionTimeoutMillis',
  'pingIdleMs', 'pingTimeoutMs', 'acquireTimeoutMs', 'closeTimeoutMs', 'maxLifetimeMs', 'maxLifetimeJitter',
  'maxWaiting', 'underPressure', 'sessionReset', 'statementTimeoutMs', 'pgbouncer', 'pooling', 'leakDetectionMs'
])

/** Connection parameters PgBouncer refuses at startup (unless listed in its ignore_startup_parameters). */
const REFUSED_BY_PGBOUNCER = ['statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout', 'options'] as const

/** Strings that may carry a password are described, never shown. */
const SECRET_BEARING = new Set(['password', 'connectionString', 'options'])

function describe (name: string, value: unknown): string {
  if (SECRET_BEARING.has(name)) return 'a value of type ' + (value === null ? 'null' : typeof value)
  if (typeof value === 'string') return `\`${value}\` (string)`
  if (typeof value === 'function') return 'a function'
  if (value !== null && typeof value === 'object') return 'an object'
  return `\`${String(value)}\` (${value === null ? 'null' : typeof value})`
}

function fail (name: string, expected: string, value: unknown): never {
  throw new PgInvalidOptionError(name, expected, describe(name, value))
}

type Check = (value: number) => boolean
/** Node's timers take at most 2^31 - 1 ms (24.8 days); a longer delay fires after 1 ms. */
const MAX_MS = 2 ** 31 - 1
const nonNegative: Check = (v) => v >= 0 && v <= MAX_MS
const positive: Check = (v) => v > 0 && v <= MAX_MS
const msOrZero = `a number of milliseconds from 0 to ${MAX_MS}`
const msAboveZero = `a number of milliseconds above 0, at most ${MAX_MS}`
const count: Check = (v) => Number.isInteger(v) && v >= 1
const wholeOrZero: Check = (v) => Number.isInteger(v) && v >= 0

function num (opts: PgPoolOptions, name: keyof PgPoolOptions, fallback: number, check: Check, expected: string): number {
  const value = opts[name]
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !check(value)) fail(name, expected, value)
  return value
}

function flag (opts: PgPoolOptions, name: 'pgbouncer' | 'pooling', fallback: boolean): boolean {
  const value = opts[name]
  if (value !== undefined && typeof value !== 'boolean') fail(name, 'true or false', value)
  return value ?? fallback
}

/** `statementTimeoutMs`, plugin-wide or a route's: 0 means none. */
export function statementTimeout (value: unknown, name = 'statementTimeoutMs'): number {
  if (value === undefined || value === false) return 0
  if (typeof value !== 'number' || !Number.isInteger(value) || !nonNegative(value)) {
    fail(name, `a whole number of milliseconds from 0 to ${MAX_MS}, or false`, value)
  }
  return value
}

function optionalFunction<T> (opts: PgPoolOptions, name: keyof PgPoolOptions): T | undefined {
  const value = opts[name]
  if (value !== undefined && typeof value !== 'function') fail(name, 'a function', value)
  return value as T | undefined
}

/** Applies defaults and validates once, at register time. Never mutates `input`. */
export function resolveOptions (input: PgPoolOptions | undefined, DefaultClient: ResolvedOptions['Client']): ResolvedOptions {
  if (input !== undefined && (input === null || typeof input !== 'object')) fail('options', 'an object', input)
  const opts: PgPoolOptions = { ...input }

  for (const name of ['connectionString', 'host', 'user', 'database', 'application_name'] as const) {
    if (opts[name] !== undefined && typeof opts[name] !== 'string') fail(name, 'a string', opts[name])
  }
  const password = opts.password
  if (password !== undefined && typeof password !== 'string' && typeof password !== 'function') {
    fail('password', 'a string or a function returning one', password)
  }

  const max = num(opts, 'max', defaults.max, count, 'a whole number of at least 1')
  const min = num(opts, 'min', defaults.min, wholeOrZero, 'a whole number of at least 0')
  if (min > max) fail('min', `at most \`max\` (${max})`, min)

  const pingIdle = opts.pingIdleMs
  if (pingIdle !== undefined && pingIdle !== false && (typeof pingIdle !== 'number' || !nonNegative(pingIdle))) {
    fail('pingIdleMs', `${msOrZero}, or false`, pingIdle)
  }

  const idle = opts.idleTimeoutMillis ?? defaults.idleTimeoutMillis
  if (typeof idle !== 'number' || !nonNegative(idle)) fail('idleTimeoutMillis', `${msOrZero} (0 keeps idle connections)`, idle)
  const lifetimeSeconds = num(opts, 'maxLifetimeSeconds', 0, (v) => nonNegative(v * 1000), `a number of seconds from 0 to ${Math.floor(MAX_MS / 1000)} (0 means no limit)`)
  const lifetimeMs = opts.maxLifetimeMs
  if (lifetimeMs !== undefined && lifetimeMs !== false && (typeof lifetimeMs !== 'number' || !nonNegative(lifetimeMs))) {
    fail('maxLifetimeMs', `${msOrZero}, or false`, lifetimeMs)
  }
  const lifetime = lifetimeMs === undefined
    ? (opts.maxLifetimeSeconds === undefined ? defaults.maxLifetimeMs : lifetimeSeconds * 1000)
    : (lifetimeMs || 0)
  const jitter = num(opts, 'maxLifetimeJitter', defaults.maxLifetimeJitter, (v) => v >= 0 && v < 1, 'a fraction >= 0 and < 1')
  const maxUses = opts.maxUses === undefined || opts.maxUses === Infinity
    ? Infinity
    : num(opts, 'maxUses', Infinity, count, 'a whole number of at least 1, or Infinity')

  const client: ClientConfig = {
    keepAlive: defaults.keepAlive,
    keepAliveInitialDelayMillis: defaults.keepAliveInitialDelayMillis,
    // Shown in pg_stat_activity unless application_name is set (option, URL, or PGAPPNAME).
    fallback_application_name: defaults.applicationName
  }
  for (const key of Object.keys(opts) as (keyof PgPoolOptions)[]) {
    if (!POOL_KEYS.has(key)) (client as Record<string, unknown>)[key] = opts[key]
  }

  if (opts.connectionString !== undefined) {
    // pg parses it in the Client constructor (no connection is made): fail now, not per request.
    try {
      // eslint-disable-next-line no-new
      new DefaultClient(client)
    } catch (error) {
      fail('connectionString', `a connection string pg can use (${(error as Error).message})`, opts.connectionString)
    }
  }

  const pgbouncer = flag(opts, 'pgbouncer', false)
  const pooling = flag(opts, 'pooling', true)
  if (!pooling && min > 0) fail('min', '0 when pooling is false (no connection is kept)', min)
  const statementTimeoutMs = statementTimeout(opts.statementTimeoutMs)
  const leak = opts.leakDetectionMs
  if (leak !== undefined && leak !== false && (typeof leak !== 'number' || !nonNegative(leak))) {
    fail('leakDetectionMs', `${msOrZero}, or false`, leak)
  }
  if (pgbouncer) {
    for (const name of REFUSED_BY_PGBOUNCER) {
      if (client[name] !== undefined) fail(name, 'unset with pgbouncer: true (PgBouncer refuses it as a connection parameter; use statementTimeoutMs, or SET LOCAL in a transaction)', client[name])
    }
  } else if (statementTimeoutMs > 0) {
    if (client.statement_timeout !== undefined) fail('statement_timeout', 'unset when statementTimeoutMs is given (use one of them)', client.statement_timeout)
    // A connection parameter: set once per connection, costs nothing per statement.
    client.statement_timeout = statementTimeoutMs
  }

  const maxWaiting = opts.maxWaiting === Infinity
    ? Infinity
    : num(opts, 'maxWaiting', 2 * max, wholeOrZero, 'a whole number of at least 0, or Infinity')
  const sessionReset = opts.sessionReset ?? (pgbouncer ? false : 'auto')
  if (sessionReset !== 'auto' && sessionReset !== 'always' && sessionReset !== false) {
    fail('sessionReset', "'auto', 'always' or false", sessionReset)
  }
  if (pgbouncer && sessionReset !== false) {
    fail('sessionReset', 'false with pgbouncer: true (in transaction mode a reset would run on whichever server connection PgBouncer picks)', sessionReset)
  }
  const underPressure = opts.underPressure ?? {}
  if (underPressure !== false && (underPressure === null || typeof underPressure !== 'object')) {
    fail('underPressure', '@fastify/under-pressure options (an object), or false', underPressure)
  }

  const verify = optionalFunction<NonNullable<PoolConfig['verify']>>(opts, 'verify')
  const onConnect = optionalFunction<NonNullable<PoolConfig['onConnect']>>(opts, 'onConnect')

  return {
    client,
    Client: optionalFunction<ResolvedOptions['Client']>(opts, 'Client') ?? DefaultClient,
    max,
    min,
    idleTimeoutMs: idle === 0 ? Infinity : idle,
    maxUses,
    maxLifetimeMs: lifetime === 0 ? Infinity : lifetime,
    maxLifetimeJitter: jitter,
    allowExitOnIdle: opts.allowExitOnIdle === true,
    connectTimeoutMs: num(opts, 'connectionTimeoutMillis', 0, nonNegative, msOrZero),
    pingIdleMs: pingIdle === false ? Infinity : (pingIdle ?? defaults.pingIdleMs),
    pingTimeoutMs: num(opts, 'pingTimeoutMs', defaults.pingTimeoutMs, positive, msAboveZero),
    acquireTimeoutMs: num(opts, 'acquireTimeoutMs', defaults.acquireTimeoutMs, positive, msAboveZero),
    closeTimeoutMs: num(opts, 'closeTimeoutMs', defaults.closeTimeoutMs, nonNegative, msOrZero),
    maxWaiting,
    sessionReset,
    statementTimeoutMs,
    pgbouncer,
    pooling,
    leakDetectionMs: leak === false ? 0 : (leak ?? defaults.leakDetectionMs),
    underPressure,
    onConnect: verify === undefined
      ? onConnect
      : async (c) => {
        await onConnect?.(c)
        await new Promise<void>((resolve, reject) => verify(c as never, (err) => err ? reject(err) : resolve()))
      }
  }
}
