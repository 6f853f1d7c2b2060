import type { Client, ClientBase, ClientConfig, PoolConfig, QueryConfig } from 'pg'
import type { FastifyUnderPressureOptions as UnderPressureOptions } from '@fastify/under-pressure'
import { PgInvalidOptionError } from './errors.js'
import { connectionParameters } from './pg-internals.js'
import type { PgDatabaseName } from './db.js'
import type { PgIdentityResolver } from './identity.js'

/** Options of the plugin itself; pg's Client and pg-pool options are accepted beside them (`OPTIONS`). */
export interface PgPoolPluginOptions {
  /**
   * Registers a further database (a read replica, a second database) under this name: then
   * `fastify.pg.<name>`, `request.dbs.<name>`, and `request.db` on routes with
   * `config: { pgPool: { db: '<name>' } }`. Without it, the database is the default one
   * (`fastify.pg`, `request.db`). Declare the names once for the type checker:
   * `declare module 'fastify-pg-pool' { interface PgDatabases { replica: true } }`.
   * Letters, digits, `_` and `-`, starting with a letter.
   * @default undefined (the default database)
   */
  name?: PgDatabaseName
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
   * A request shed with `503 FST_PG_SATURATED` gets `Connection: close`, so its keep-alive
   * connection is closed: for a load balancer that only moves a retry to another instance on a
   * new connection. Off, the connection stays open for the client's retry (measured cheaper for
   * both sides: see the README's Overload benchmark).
   * @default false
   */
  closeShedConnections?: boolean
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
   * A statement still running when its request ends (the client went away, the request timed
   * out, a hijacked socket closed), when a `pool.connect()` client is released, or when
   * `app.close()` passes `closeTimeoutMs`, is cancelled at once (PostgreSQL's CancelRequest). This
   * is how long it then has to stop before its connection is destroyed instead (a blackholed
   * socket never answers).
   * @default 500
   */
  cancelGraceMs?: number
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
   * Statements with parameters are prepared once per connection and then run by name: the server
   * parses and plans them once per connection instead of once per run (pgx and postgres.js do the
   * same). A statement the server no longer knows (`DEALLOCATE`, `DISCARD ALL`) or whose result
   * columns changed (`ALTER TABLE`) is prepared again and sent once more when nothing else ran in
   * between. A route can say otherwise (`config.pgPool.prepare`), and a statement
   * (`{ text, values, prepare: false }`). Off behind PgBouncer (`pgbouncer: true`).
   * @default true (false with `pgbouncer: true`)
   */
  prepare?: boolean
  /**
   * How many prepared statements each connection keeps (see `prepare`): past it, the least
   * recently used one is deallocated when its connection comes back to the pool.
   * @default 100
   */
  statementCacheSize?: number
  /**
   * Who is asking, in the database: `(request, db) => ({ role, settings })`, sync or async. Each
   * statement a request sends on this database (through `request.db`, its transactions, its
   * `connection()` client, an ORM on them) runs as `role` with `settings` set for it
   * (`set_config(name, value, true)` in the statement's own transaction, sent in front of it in
   * the same round trip): what row-level security policies read. Called once per request, on its
   * first statement; `undefined` returned: none. A route can say otherwise
   * (`config.pgPool.identity`, `false` for none). See the README's "Row-level security".
   * @default undefined (statements run as the connection's user)
   */
  identity?: PgIdentityResolver
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
  /** `false`: sent unprepared, whatever the plugin's or the route's `prepare` says. */
  prepare?: boolean
}

/** Everything `fastify.register(pgPool, opts)` accepts. */
export type PgPoolOptions = Omit<PoolConfig, 'log' | 'Promise'> & PgPoolPluginOptions

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
  readonly cancelGraceMs: number
  readonly maxWaiting: number
  readonly sessionReset: 'auto' | 'always' | false
  /** 0: none. */
  readonly statementTimeoutMs: number
  readonly pgbouncer: boolean
  readonly prepare: boolean
  readonly statementCacheSize: number
  readonly identity: PgIdentityResolver | undefined
  readonly pooling: boolean
  /** 0: off. */
  readonly leakDetectionMs: number
  readonly underPressure: UnderPressureOptions | false
  readonly closeShedConnections: boolean
  /** `underPressure` was given (not the default). */
  readonly underPressureGiven: boolean
  /** `undefined`: the default database. */
  readonly name: string | undefined
  readonly onConnect: ((client: ClientBase) => void | Promise<void>) | undefined
}

/**
 * Names a database cannot take: `default` is the unnamed one's key in `request.dbs` and in a
 * route's `db`, the others are members of `fastify.pg`, or of every object.
 */
export const RESERVED_NAMES = ['default', 'pool', 'query', 'connect', 'transaction', 'stats', 'healthCheck', 'pressureHandler', 'then', 'constructor', 'toJSON']

/** Node's timers take at most 2^31 - 1 ms (24.8 days); a longer delay fires after 1 ms. */
const MAX_MS = 2 ** 31 - 1

/** What a value must be: a test, and the words that say it in an error. */
export interface Kind<T = unknown> {
  readonly expected: string
  readonly test: (value: unknown) => value is T
}

function kind<T> (expected: string, test: (value: unknown) => boolean): Kind<T> {
  return { expected, test: test as Kind<T>['test'] }
}

const isWhole = (v: unknown, min: number, max: number): v is number =>
  typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max
const isPlainObject = (v: unknown): v is object =>
  v !== null && typeof v === 'object' && [Object.prototype, null].includes(Object.getPrototypeOf(v))

/** Milliseconds for a timer: whole, from `min` to 2^31 - 1, and `false` (off) if `orFalse`. */
function ms (min: 0 | 1, orFalse: true): Kind<number | false>
function ms (min: 0 | 1, orFalse?: false): Kind<number>
function ms (min: 0 | 1, orFalse = false): Kind<number | false> {
  const range = min === 0 ? `from 0 to ${MAX_MS}` : `above 0, at most ${MAX_MS}`
  return kind(`a whole number of milliseconds ${range}${orFalse ? ', or false' : ''}`, (v) => (orFalse && v === false) || isWhole(v, min, MAX_MS))
}

const bool = kind<boolean>('true or false', (v) => typeof v === 'boolean')
const text = kind<string>('a string', (v) => typeof v === 'string')
const name = kind<string>('a string, not empty', (v) => typeof v === 'string' && v !== '')
const fn = <T>(): Kind<T> => kind('a function', (v) => typeof v === 'function')
const count = (min: 0 | 1, orInfinity = false): Kind<number> => kind(
  `a whole number of at least ${min}${orInfinity ? ', or Infinity' : ''}`,
  (v) => (orInfinity && v === Infinity) || isWhole(v, min, Infinity)
)

/**
 * Who reads an option: `pool`, the plugin (its own options and pg-pool's, never passed to a
 * Client), or `client`, pg's Client (passed to every connection as given).
 */
interface Spec<T> {
  readonly to: 'pool' | 'client'
  readonly kind: Kind<T>
  /** The plugin's default, when it has a fixed one. */
  readonly default?: T
}
const pool = <T>(kind: Kind<T>, fallback?: T): Spec<T> => ({ to: 'pool', kind, default: fallback })
const client = <T>(kind: Kind<T>, fallback?: T): Spec<T> => ({ to: 'client', kind, default: fallback })

/**
 * Every option accepted, what it must be, and its default: the only list. A key not here is
 * refused (with the reason in REFUSED, or the closest key here). Checks that involve two options
 * are in `resolveOptions`. The README's Options section names each of them (a test checks).
 */
export const OPTIONS = {
  // The plugin's own (PgPoolPluginOptions).
  name: pool(kind<PgDatabaseName>(`a name of letters, digits, \`_\` and \`-\`, starting with a letter, and none of ${RESERVED_NAMES.map((n) => `\`${n}\``).join(', ')}`,
    (v) => typeof v === 'string' && /^[A-Za-z][\w-]{0,62}$/.test(v) && !RESERVED_NAMES.includes(v) && !(v in Object.prototype))),
  pingIdleMs: pool(ms(0, true), 1000),
  pingTimeoutMs: pool(ms(1), 1000),
  acquireTimeoutMs: pool(ms(1), 2000),
  sessionReset: pool(kind<'auto' | 'always' | false>("'auto', 'always' or false", (v) => v === 'auto' || v === 'always' || v === false)),
  maxWaiting: pool(count(0, true)),
  closeShedConnections: pool(bool, false),
  underPressure: pool(kind<UnderPressureOptions | false>('@fastify/under-pressure options (an object), or false', (v) => v === false || isPlainObject(v)), {}),
  maxLifetimeMs: pool(ms(0, true), 30 * 60_000),
  maxLifetimeJitter: pool(kind<number>('a fraction >= 0 and < 1', (v) => typeof v === 'number' && v >= 0 && v < 1), 0.1),
  closeTimeoutMs: pool(ms(0), 10_000),
  cancelGraceMs: pool(ms(1), 500),
  statementTimeoutMs: pool(ms(0, true), 0),
  pgbouncer: pool(bool, false),
  prepare: pool(bool),
  statementCacheSize: pool(count(1), 100),
  identity: pool(kind<PgIdentityResolver>('a function (request, db) returning { role, settings }, a promise of one, or undefined', (v) => typeof v === 'function')),
  leakDetectionMs: pool(ms(0, true), 0),
  pooling: pool(bool, true),
  // pg-pool's.
  max: pool(count(1), 10),
  min: pool(count(0), 0),
  // (null, which pg-pool's type allows, means the default.)
  idleTimeoutMillis: pool(kind<number>(`${ms(0).expected} (0 keeps idle connections)`, (v) => v === null || ms(0).test(v)), 10_000),
  maxUses: pool(count(1, true), Infinity),
  maxLifetimeSeconds: pool(kind<number>(`a number of seconds from 0 to ${Math.floor(MAX_MS / 1000)} (0 means no limit)`, (v) => typeof v === 'number' && v >= 0 && v * 1000 <= MAX_MS)),
  allowExitOnIdle: pool(bool, false),
  connectionTimeoutMillis: pool(ms(0), 0),
  Client: pool(kind<ResolvedOptions['Client']>('a function: a class like pg.Client (connect, query, end and on on its prototype)', (v) => {
    const proto = typeof v === 'function' ? (v as { prototype?: Record<string, unknown> }).prototype : undefined
    return proto !== undefined && ['connect', 'query', 'end', 'on'].every((m) => typeof proto[m] === 'function')
  })),
  onConnect: pool(fn<NonNullable<PoolConfig['onConnect']>>()),
  verify: pool(fn<NonNullable<PoolConfig['verify']>>()),
  // pg's Client (ClientConfig, and the connection parameters pg reads from it).
  connectionString: client(name),
  host: client(name),
  port: client(kind<number | string>('a whole number from 1 to 65535', (v) => isWhole(typeof v === 'string' && /^\d{1,5}$/.test(v) ? Number(v) : v, 1, 65_535))),
  user: client(name),
  password: client(kind<string | (() => string | Promise<string>)>('a string or a function returning one', (v) => typeof v === 'string' || typeof v === 'function')),
  database: client(name),
  ssl: client(kind<boolean | object>('true, false, or tls.connect options (an object)', (v) => typeof v === 'boolean' || isPlainObject(v))),
  sslnegotiation: client(kind<'postgres' | 'direct'>("'postgres' or 'direct'", (v) => v === 'postgres' || v === 'direct')),
  application_name: client(text),
  fallback_application_name: client(text, 'fastify-pg-pool'),
  // (Shown described, never as given: it may carry a password.)
  options: client(text),
  statement_timeout: client(ms(0, true)),
  lock_timeout: client(ms(0, true)),
  idle_in_transaction_session_timeout: client(ms(0, true)),
  query_timeout: client(ms(0, true)),
  // TCP keepalive: the first probe after 10 s of silence keeps NAT and load-balancer flow
  // tables warm (their idle timeouts are minutes: 350 s on AWS NLB, 4 min on Azure) and lets the
  // kernel notice a dead peer on its own; pings at checkout catch the rest.
  keepAlive: client(bool, true),
  keepAliveInitialDelayMillis: client(ms(0), 10_000),
  types: client(kind<NonNullable<ClientConfig['types']>>('an object with a getTypeParser function returning parsers (pg.types, a pg.TypeOverrides)', (v) => {
    try {
      return v !== null && typeof v === 'object' && typeof (v as { getTypeParser: (oid: number, format: string) => unknown }).getTypeParser(23, 'text') === 'function'
    } catch {
      return false
    }
  })),
  stream: client(kind<NonNullable<ClientConfig['stream']>>('a function returning a new stream for each connection (one stream cannot carry a pool of connections)', (v) => typeof v === 'function')),
  binary: client(bool),
  // pg's JavaScript client always reads and writes UTF-8 and ignores this (only pg-native reads it).
  client_encoding: client(kind<string>("'UTF8' (pg's JavaScript client speaks nothing else)", (v) => typeof v === 'string' && /^utf-?8$/i.test(v))),
  enableChannelBinding: client(bool),
  scramMaxIterations: client(count(1)),
  pipeline: client(bool)
} as const satisfies Record<string, Spec<any>>

type Options = typeof OPTIONS
type Name = keyof Options
type ValueOf<N extends Name> = Options[N] extends Spec<infer T> ? T : never

/** Keys pg or pg-pool (or a neighbouring plugin) accept that this plugin refuses, and why. */
export const REFUSED: Readonly<Record<string, string>> = {
  log: "not used: the plugin logs through Fastify's logger (fastify.log, request.log)",
  Promise: 'not supported: pg deprecates custom Promise implementations (gone in pg 9); the plugin uses native promises',
  native: "not supported as a flag: pass pg-native's client class as `Client`",
  pg: 'not supported: the plugin uses the pg it depends on; pass another client class as `Client`',
  connection: 'not supported: one Connection object cannot carry a pool of connections (`stream` takes a function)',
  replication: "not supported: a replication connection cannot run the pool's queries",
  poolSize: "pg-pool's old name for `max`: use `max`",
  connect_timeout: "not read by pg's JavaScript client: use `connectionTimeoutMillis`",
  keepalives: "not read by pg's JavaScript client: use `keepAlive`",
  keepalives_idle: "not read by pg's JavaScript client: use `keepAliveInitialDelayMillis`",
  dbname: 'not read by pg: use `database`',
  ...Object.fromEntries(['sslmode', 'sslcert', 'sslkey', 'sslrootcert'].map((key) => [key,
    `read by pg only from \`connectionString\` (?${key}=...): put it there, or use \`ssl\``])),
  ...Object.fromEntries(['parseInt8', 'parseInputDatesAsUTC'].map((key) => [key,
    `a pg.defaults setting, not a connection option: set pg.defaults.${key}`])),
  ...Object.fromEntries(['transaction', 'shedding'].map((key) => [key,
    `a route option: set it on the route, in \`config: { pgPool: { ${key} } }\``])),
  ...Object.fromEntries(['maxEventLoopDelay', 'maxEventLoopUtilization', 'maxHeapUsedBytes', 'maxRssBytes', 'healthCheck',
    'healthCheckInterval', 'exposeStatusRoute', 'pressureHandler', 'retryAfter', 'sampleInterval', 'customError'].map((key) => [key,
    `an @fastify/under-pressure option: put it in \`underPressure: { ${key} }\``]))
}

/** Fastify's own register options: Fastify reads them, and passes them on to every plugin. */
const FASTIFY_KEYS = new Set(['prefix', 'logLevel', 'logSerializers'])

/** Connection parameters PgBouncer refuses at startup (unless listed in its ignore_startup_parameters). */
const REFUSED_BY_PGBOUNCER = ['statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout', 'options'] as const

/** Strings that may carry a password are described, never shown. */
const SECRET_BEARING = new Set(['password', 'connectionString', 'options'])

function describe (name: string, value: unknown): string {
  if (SECRET_BEARING.has(name)) return 'a value of type ' + (value === null ? 'null' : typeof value)
  if (typeof value === 'string') return `\`${value}\` (string)`
  if (typeof value === 'function') return 'a function'
  if (Array.isArray(value)) return 'an array'
  if (value !== null && typeof value === 'object') return 'an object'
  return `\`${String(value)}\` (${value === null ? 'null' : typeof value})`
}

function fail (name: string, expected: string, value: unknown): never {
  throw new PgInvalidOptionError(name, expected, describe(name, value))
}

/** Edit distance (optimal string alignment: a swap of two neighbours counts as one edit). */
function distance (a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) (d[0] as number[])[j] = j
  for (let i = 1; i <= a.length; i++) {
    const row = d[i] as number[]
    const prev = d[i - 1] as number[]
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      row[j] = Math.min(prev[j] as number + 1, row[j - 1] as number + 1, prev[j - 1] as number + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j] as number, (d[i - 2] as number[])[j - 2] as number + 1)
    }
  }
  return (d[a.length] as number[])[b.length] as number
}

/**
 * The accepted key closest to a misspelt one, if one is close enough: case, `_` and `-` aside,
 * `Millis` read as `Ms`, and a key that starts the other (`isolation`, `isolationLevel`) close.
 */
export function closest (key: string, candidates: Iterable<string>): string | undefined {
  const plain = (s: string): string => s.toLowerCase().replace(/[-_]/g, '').replace(/millis(econds)?$/, 'ms')
  const wanted = plain(key)
  let best: string | undefined
  let bestDistance = Math.max(1, Math.floor(wanted.length / 3)) + 1
  for (const candidate of candidates) {
    const other = plain(candidate)
    const prefix = Math.min(wanted.length, other.length) >= 4 && (other.startsWith(wanted) || wanted.startsWith(other))
    const d = Math.min(distance(wanted, other), prefix ? 1 : Infinity)
    if (d < bestDistance) [best, bestDistance] = [candidate, d]
  }
  return best
}

/** A key that is not an accepted option: refused with its reason, or the key it most resembles. */
export function unknownKey (key: string, value: unknown, candidates: Iterable<string>, prefix = ''): never {
  const reason = Object.hasOwn(REFUSED, key) && prefix === '' ? REFUSED[key] : undefined
  if (reason !== undefined) fail(key, `unset (${reason})`, value)
  const near = closest(key, candidates)
  throw new PgInvalidOptionError(prefix + key, `a known option${near === undefined ? '' : ` (did you mean \`${near}\`?)`}`, 'an unknown key')
}

/** "0 or false: off", as a number: `off` (0, or Infinity for a threshold never reached) when off. */
const orOff = (value: number | false, off: number): number => value === false || value === 0 ? off : value

/** Applies defaults and validates once, at register time. Never mutates `input`. */
export function resolveOptions (input: PgPoolOptions | undefined, DefaultClient: ResolvedOptions['Client']): ResolvedOptions {
  if (input !== undefined && (input === null || typeof input !== 'object' || Array.isArray(input))) fail('options', 'an object', input)
  // Only validated keys are copied; `undefined` means "not given", as if the key were absent.
  const given = new Map<Name, unknown>()
  for (const [key, value] of Object.entries(input ?? {})) {
    if (value === undefined || FASTIFY_KEYS.has(key)) continue
    if (!Object.hasOwn(OPTIONS, key)) unknownKey(key, value, Object.keys(OPTIONS))
    const { kind } = OPTIONS[key as Name] as Spec<unknown>
    if (!kind.test(value)) fail(key, kind.expected, value)
    given.set(key as Name, value)
  }
  const has = (key: Name): boolean => given.has(key)
  const get = <N extends Name>(key: N): ValueOf<N> => (given.get(key) ?? (OPTIONS[key] as Spec<unknown>).default) as ValueOf<N>

  const max = get('max')
  const min = get('min')
  if (min > max) fail('min', `at most \`max\` (${max})`, min)
  const pooling = get('pooling')
  if (!pooling && min > 0) fail('min', '0 when pooling is false (no connection is kept)', min)

  const client: Record<string, unknown> = {}
  for (const key of Object.keys(OPTIONS) as Name[]) {
    const value = get(key)
    if (OPTIONS[key].to === 'client' && value !== undefined) client[key] = value
  }
  if (client.sslnegotiation === 'direct' && client.ssl !== true && !isPlainObject(client.ssl) && !has('connectionString')) {
    fail('sslnegotiation', "'postgres' unless `ssl` is on ('direct' starts TLS at once)", client.sslnegotiation)
  }
  const pgbouncer = get('pgbouncer')
  if (has('connectionString')) {
    // pg parses it in the Client constructor (no connection is made): fail now, not per request.
    let parsed: Record<string, unknown> = {}
    try {
      parsed = connectionParameters(new DefaultClient(client as ClientConfig))
    } catch (error) {
      fail('connectionString', `a connection string pg can use (${(error as Error).message})`, get('connectionString'))
    }
    // pg reads these from its query string too (`?options=...`): PgBouncer would refuse every connection.
    const refused = pgbouncer ? REFUSED_BY_PGBOUNCER.filter((key) => parsed[key]) : []
    if (refused.length > 0) {
      fail('connectionString', `without ${refused.map((key) => `\`${key}\``).join(', ')} with pgbouncer: true (PgBouncer refuses ${refused.length > 1 ? 'them' : 'it'} as a connection parameter; use statementTimeoutMs, or SET LOCAL in a transaction)`, get('connectionString'))
    }
  }

  const statementTimeoutMs = orOff(get('statementTimeoutMs'), 0)
  if (pgbouncer) {
    // (pg sends these only when truthy.)
    for (const key of REFUSED_BY_PGBOUNCER) {
      if (client[key]) fail(key, 'unset with pgbouncer: true (PgBouncer refuses it as a connection parameter; use statementTimeoutMs, or SET LOCAL in a transaction)', client[key])
    }
  } else if (statementTimeoutMs > 0) {
    if (client.statement_timeout) fail('statement_timeout', 'unset when statementTimeoutMs is given (use one of them)', client.statement_timeout)
    // A connection parameter: set once per connection, costs nothing per statement.
    client.statement_timeout = statementTimeoutMs
  }
  const cancelGraceMs = get('cancelGraceMs')
  // The server's timeout never reaches a client whose socket was blackholed: pg gives up waiting
  // at the timeout plus the grace (a statement the route times otherwise carries its own bound).
  if (statementTimeoutMs > 0 && client.query_timeout === undefined) client.query_timeout = Math.min(MAX_MS, statementTimeoutMs + cancelGraceMs)
  const sessionReset = has('sessionReset') ? get('sessionReset') : (pgbouncer ? false : 'auto')
  if (pgbouncer && sessionReset !== false) {
    fail('sessionReset', 'false with pgbouncer: true (in transaction mode a reset would run on whichever server connection PgBouncer picks)', sessionReset)
  }

  const prepare = has('prepare') ? get('prepare') : !pgbouncer
  if (pgbouncer && prepare) {
    fail('prepare', 'false with pgbouncer: true (in transaction mode a statement prepared on one server connection is unknown on the next; PgBouncer 1.18 cannot keep them)', prepare)
  }

  const lifetime = has('maxLifetimeMs') || !has('maxLifetimeSeconds') ? get('maxLifetimeMs') : get('maxLifetimeSeconds') * 1000
  const verify = has('verify') ? get('verify') : undefined
  const onConnect = has('onConnect') ? get('onConnect') : undefined

  return {
    client: client as ClientConfig,
    Client: has('Client') ? get('Client') : DefaultClient,
    max,
    min,
    idleTimeoutMs: orOff(get('idleTimeoutMillis'), Infinity),
    maxUses: get('maxUses'),
    maxLifetimeMs: orOff(lifetime, Infinity),
    maxLifetimeJitter: get('maxLifetimeJitter'),
    allowExitOnIdle: get('allowExitOnIdle'),
    connectTimeoutMs: get('connectionTimeoutMillis'),
    pingIdleMs: get('pingIdleMs') === false ? Infinity : get('pingIdleMs') as number,
    pingTimeoutMs: get('pingTimeoutMs'),
    acquireTimeoutMs: get('acquireTimeoutMs'),
    closeTimeoutMs: get('closeTimeoutMs'),
    cancelGraceMs,
    maxWaiting: has('maxWaiting') ? get('maxWaiting') : 2 * max,
    sessionReset,
    statementTimeoutMs,
    pgbouncer,
    prepare,
    statementCacheSize: get('statementCacheSize'),
    identity: has('identity') ? get('identity') : undefined,
    pooling,
    leakDetectionMs: orOff(get('leakDetectionMs'), 0),
    underPressure: get('underPressure'),
    underPressureGiven: has('underPressure'),
    closeShedConnections: get('closeShedConnections'),
    name: has('name') ? get('name') : undefined,
    onConnect: verify === undefined
      ? onConnect
      : async (c) => {
        await onConnect?.(c)
        await new Promise<void>((resolve, reject) => verify(c as never, (err) => err ? reject(err) : resolve()))
      }
  }
}
