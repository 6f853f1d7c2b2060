import type { RouteOptions } from 'fastify'
import type { PgDatabaseName } from './db.js'
import { PgInvalidOptionError } from './errors.js'
import { closest, OPTIONS } from './options.js'
import type { PgIdentityResolver } from './identity.js'
import { checkTransactionOptions, type TransactionOptions } from './transaction.js'

/** Route config: `{ config: { pgPool: { ... } } }`. */
export interface PgRouteConfig {
  /** `false`: this route is not shed while the pool is saturated (liveness probes). */
  shedding?: boolean
  /**
   * Runs the whole handler in one transaction, begun on the request's first statement:
   * committed before the reply is sent when its status is below 400, rolled back otherwise and
   * on every path where no reply is sent (abort, timeout, hijack). `true`, or how to begin it.
   * `request.db.transaction()` inside it makes a savepoint.
   */
  transaction?: boolean | TransactionOptions
  /**
   * This route's statement timeout, instead of the plugin's `statementTimeoutMs`, for every
   * database the request uses.
   */
  statementTimeoutMs?: number | false
  /**
   * The database `request.db` is on this route (and whose saturation sheds it): a `name` given at
   * register, or `'default'`.
   * @default 'default'
   */
  db?: PgDatabaseName | 'default'
  /**
   * Where `request.db` goes when `db` is down or saturated (its checkout failed with
   * `FST_PG_UNAVAILABLE`, `FST_PG_ACQUIRE_TIMEOUT` or `FST_PG_QUEUE_FULL`): another database's
   * name, usually `'default'` for a replica's routes. A read there may see writes the replica
   * has not replayed yet, and the fallback takes the replica's load. Off when unset.
   */
  fallback?: PgDatabaseName | 'default'
  /**
   * Whether this route's statements with parameters are prepared (see the plugin's `prepare`),
   * on every database it uses (never behind PgBouncer).
   * @default the plugin's `prepare`
   */
  prepare?: boolean
  /**
   * This route's identity in the database, instead of the plugin's `identity` (of every database
   * the request uses): a function of the request, or `false` for none (a sign-in route that
   * reads the users table before anyone is known).
   * @default the plugin's `identity`, per database
   */
  identity?: PgIdentityResolver | false
}

/** A route's settings after validation, as the request handle reads them. */
export interface RouteSettings {
  /** Begin options of the route's transaction, when it runs in one. */
  readonly transaction: TransactionOptions | undefined
  /** The route's own statement timeout (0: none), when it has one. */
  readonly statementTimeoutMs: number | undefined
  /** The database of `request.db` by name (`'default'`: the unnamed one); unset: the default. */
  readonly db: string | undefined
  /** The database `request.db` falls back to, by name. */
  readonly fallback: string | undefined
  /** Whether its statements are prepared, when the route says. */
  readonly prepare: boolean | undefined
  /** The route's own identity (`false`: none), when it has one. */
  readonly identity: PgIdentityResolver | false | undefined
}

export const NONE: RouteSettings = { transaction: undefined, statementTimeoutMs: undefined, db: undefined, fallback: undefined, prepare: undefined, identity: undefined }
/**
 * Keyed by each route's own copy of its `config.pgPool`, made when the route was added: a config
 * object shared by several routes, or reaching a route this plugin never saw, has no entry.
 */
const settingsOf = new WeakMap<object, RouteSettings>()

/** The settings of the route a request is on (validated when the route was added). */
export function routeSettings (config: object | undefined): RouteSettings {
  if (config === undefined) return NONE
  const settings = settingsOf.get(config)
  // Its transaction hook could not be added: refuse rather than run it without one.
  if (settings === undefined) throw new PgInvalidOptionError('config.pgPool', 'set on a route added after fastify-pg-pool was registered', 'a route added before')
  return settings
}

/** The settings of a route, without failing: those of a route this plugin never saw are the defaults. */
export function knownSettings (config: object | undefined): RouteSettings {
  return (config === undefined ? undefined : settingsOf.get(config)) ?? NONE
}

const ROUTE_KEYS = ['shedding', 'transaction', 'statementTimeoutMs', 'db', 'fallback', 'prepare', 'identity']

const isObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && [Object.prototype, null].includes(Object.getPrototypeOf(v))

/** A route option's value as written (route config holds no secrets): JSON where it can be. */
function show (value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`
  // (A function's source reads differently from one build of it to another.)
  if (typeof value === 'function') return 'a function'
  try {
    const json = JSON.stringify(value)
    if (json !== undefined) return json
  } catch {}
  return typeof value === 'object' && value !== null ? 'an object' : String(value)
}

/**
 * Validates a route's `config.pgPool` when the route is added (a typo fails at startup, not on
 * a request), and gives a transactional route the hook that ends its transaction.
 */
export function setupRoute (route: RouteOptions, endTransaction: NonNullable<RouteOptions['onSend']>): RouteSettings | undefined {
  const where = `(route ${route.method.toString()} ${route.url})`
  // @fastify/postgres's route option would be ignored: the handler would run without the
  // transaction its author asked for.
  const foreign = (route as { pg?: unknown }).pg
  if (foreign !== undefined) {
    throw new PgInvalidOptionError('pg', `unset: it is @fastify/postgres's route option; here a route runs in a transaction with \`config: { pgPool: { transaction: true } }\` ${where}`, show(foreign))
  }
  const config = (route.config as { pgPool?: unknown } | undefined)?.pgPool
  if (config === undefined) return undefined
  const fail = (name: string, expected: string, value: unknown): never => {
    throw new PgInvalidOptionError(`config.pgPool${name}`, `${expected} ${where}`, show(value))
  }
  const known = (object: Record<string, unknown>, keys: string[], prefix: string): void => {
    for (const key of Object.keys(object)) {
      if (keys.includes(key) || object[key] === undefined) continue
      const near = closest(key, keys)
      throw new PgInvalidOptionError(`config.pgPool${prefix}.${key}`, `a known option${near === undefined ? '' : ` (did you mean \`${near}\`?)`} ${where}`, 'an unknown key')
    }
  }
  if (!isObject(config)) return fail('', 'an object', config)
  known(config, ROUTE_KEYS, '')
  const { shedding, transaction, statementTimeoutMs, db, fallback, prepare, identity } = config as PgRouteConfig
  if (shedding !== undefined && typeof shedding !== 'boolean') fail('.shedding', 'true or false', shedding)
  if (prepare !== undefined && typeof prepare !== 'boolean') fail('.prepare', 'true or false', prepare)
  if (identity !== undefined && identity !== false && typeof identity !== 'function') fail('.identity', 'a function (request, db) returning { role, settings }, or false for none', identity)
  let begin: TransactionOptions | undefined
  if (transaction === true) begin = {}
  else if (transaction !== undefined && transaction !== false) {
    if (!isObject(transaction)) return fail('.transaction', 'true, false or transaction options', transaction)
    checkTransactionOptions(transaction, 'config.pgPool.transaction', ` ${where}`)
    begin = { ...transaction }
  }
  if (statementTimeoutMs !== undefined && !OPTIONS.statementTimeoutMs.kind.test(statementTimeoutMs)) {
    fail('.statementTimeoutMs', OPTIONS.statementTimeoutMs.kind.expected, statementTimeoutMs)
  }
  // (Whether a database of that name is registered is known when the app is ready: see databases.ts.)
  if (db !== undefined && !isName(db)) fail('.db', "a database's name (its `name` at register), or 'default'", db)
  if (fallback !== undefined) {
    if (!isName(fallback)) fail('.fallback', "a database's name (its `name` at register), or 'default'", fallback)
    if ((db ?? 'default') === fallback) fail('.fallback', `another database than the route's own (\`db\` is ${show(db ?? 'default')})`, fallback)
  }
  const own: PgRouteConfig = { ...config }
  route.config = { ...route.config, pgPool: own }
  const settings: RouteSettings = {
    transaction: begin,
    statementTimeoutMs: statementTimeoutMs === undefined ? undefined : statementTimeoutMs || 0,
    db,
    fallback,
    prepare,
    identity
  }
  settingsOf.set(own, settings)
  if (begin !== undefined) {
    // After the route's own onSend hooks: they may still change the status.
    const own: unknown[] = route.onSend === undefined ? [] : [route.onSend].flat()
    route.onSend = [...own, endTransaction] as typeof route.onSend
  }
  return settings
}

const isName = (value: unknown): value is string => value === 'default' || OPTIONS.name.kind.test(value)
