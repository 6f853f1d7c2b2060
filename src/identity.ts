import type { FastifyRequest } from 'fastify'
import { PgIdentityError } from './errors.js'
import type { Prefix } from './pg-internals.js'

/**
 * Who is asking, in the database: the role a request's statements run as and the settings its
 * row-level security policies read (`current_setting('app.tenant_id', true)`). Sent in front of
 * each statement, in the statement's own transaction (`set_config(name, value, true)`, with the
 * values as parameters): nothing of it is left on the session, so nothing can reach another
 * request, and it works behind PgBouncer in transaction mode. See the README's "Row-level
 * security".
 */
export interface PgIdentity {
  /**
   * The role statements run as (`SET LOCAL ROLE`): one the connection's user is a member of.
   * Unset: the connection's own.
   */
  role?: string | undefined
  /**
   * Settings for the request's statements, by name: custom ones (`app.tenant_id`,
   * `request.jwt.claims`) or PostgreSQL's (`search_path`). Numbers, booleans and bigints are
   * sent as their text.
   */
  settings?: Readonly<Record<string, string | number | boolean | bigint>> | undefined
}

/**
 * Derives a request's identity, once per request and database (`db`: the database's name,
 * `'default'` for the default one), on its first statement and before its connection is checked
 * out. `undefined` (or `null`): none, the statements run as the connection's user. What it throws
 * fails the request's statements, unsent: an error with a `statusCode` as it is (a 401), any other
 * as `FST_PG_IDENTITY` (500).
 */
export type PgIdentityResolver = (request: FastifyRequest, db: string) => PgIdentity | undefined | null | PromiseLike<PgIdentity | undefined | null>

/**
 * What a resolver gave, checked and ready to go in front of statements: the set_config statement,
 * its values, and the name it is prepared under where statements are prepared.
 */
export interface Identity extends Exclude<Prefix, string> {
  readonly name: string
}

/**
 * A setting's name as PostgreSQL reads one in set_config: identifiers joined by dots (a custom
 * setting has at least one).
 */
const SETTING = /^[A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)*$/
/** Settings the identity cannot carry: the role has its own field, the timeout is the plugin's. */
const OWNED = new Map([
  ['role', 'use `role`'],
  ['session_authorization', 'use `role`'],
  ['statement_timeout', "use the plugin's or the route's statementTimeoutMs"]
])

/**
 * The texts of the set_config statement, by shape (a role or not, how many settings), and the
 * name each is prepared under: the same few on every connection.
 */
const shapes = new Map<string, { text: string, name: string }>()
/** What the names of those statements start with. */
export const NAMED = 'fpp_identity_'

function shapeOf (role: boolean, settings: number): { text: string, name: string } {
  const key = `${role ? 'r' : ''}${settings}`
  let shape = shapes.get(key)
  if (shape === undefined) {
    // (Schema-qualified: a search_path among the settings cannot put another set_config first.)
    const calls = role ? ["pg_catalog.set_config('role', $1, true)"] : []
    let n = calls.length
    for (let i = 0; i < settings; i++) calls.push(`pg_catalog.set_config($${++n}, $${++n}, true)`)
    shapes.set(key, shape = { text: `select ${calls.join(', ')}`, name: `${NAMED}${key}` })
  }
  return shape
}

const hasNul = (text: string): boolean => text.includes('\0')

function invalid (why: string): never {
  throw new PgIdentityError(`the identity function returned ${why}`)
}

/**
 * A resolver's value checked (`undefined`: none): a role that is a non-empty string (not `none`,
 * which would mean the connection's own), settings with valid names and values.
 */
export function identityOf (value: unknown): Identity | undefined {
  if (value === undefined || value === null) return undefined
  if (typeof value !== 'object' || Array.isArray(value)) invalid(`${typeof value === 'object' ? 'an array' : `a ${typeof value}`} (expected { role, settings }, or undefined for none)`)
  const { role, settings = {}, ...rest } = value as PgIdentity
  const unknown = Object.keys(rest)
  if (unknown.length > 0) invalid(`an unknown key \`${unknown[0]}\` (expected role and settings)`)
  const values: string[] = []
  if (role !== undefined) {
    if (typeof role !== 'string' || role === '' || hasNul(role)) invalid('a role that is not a non-empty string')
    // (set_config('role', 'none') is RESET ROLE: statements would run as the connection's user.)
    if (role === 'none') invalid('the role `none`, which would mean no role: return no role instead')
    values.push(role)
  }
  // (A plain object: what a class or a prototype would hold, Object.entries would not see.)
  if (settings === null || typeof settings !== 'object' || ![Object.prototype, null].includes(Object.getPrototypeOf(settings))) invalid('settings that are not a plain object of names and values')
  const entries = Object.entries(settings)
  for (const [name, raw] of entries) {
    if (!SETTING.test(name)) invalid(`a setting name \`${name.slice(0, 64)}\` that is not a setting's name (such as app.tenant_id)`)
    const owned = OWNED.get(name.toLowerCase())
    if (owned !== undefined) invalid(`the setting \`${name}\`: ${owned}`)
    let text: string
    if (typeof raw === 'string') text = raw
    else if ((typeof raw === 'number' && Number.isFinite(raw)) || typeof raw === 'boolean' || typeof raw === 'bigint') text = String(raw)
    // (A missing claim must not run the statements without it.)
    else return invalid(`no usable value for the setting \`${name}\` (${raw === null ? 'null' : typeof raw})`)
    if (hasNul(text)) invalid(`a value for the setting \`${name}\` holding a NUL character`)
    values.push(name, text)
  }
  if (values.length === 0) return undefined
  const { text, name } = shapeOf(role !== undefined, entries.length)
  // What the prepared statement must answer: each set_config returns the value it set (a custom
  // setting's as given; PostgreSQL's own may come back reworded: any value).
  const row: Array<string | undefined> = role === undefined ? [] : [role]
  for (let i = row.length; i < values.length; i += 2) row.push((values[i] as string).includes('.') ? values[i + 1] : undefined)
  return { text, values, name, answers: { row, otherwise: forged } }
}

/** What a resolver threw, as the request's statements fail with it. */
function failure (error: unknown): Error {
  const status = (error as { statusCode?: unknown } | null)?.statusCode
  if (error instanceof Error && typeof status === 'number' && status >= 400 && status < 600) return error
  return new PgIdentityError('the identity function threw', { cause: error })
}

/**
 * A request's identity on one database: had from its function once, on the first checkout (at
 * once when the function returns it, or a promise), and the same every time after; a failure
 * too, thrown (or rejected) again every time.
 */
export class RequestIdentity {
  #resolver: PgIdentityResolver | undefined
  readonly #request: FastifyRequest
  readonly #db: string
  #had: Identity | undefined | Promise<Identity | undefined>
  #failure: unknown
  /** How long an async function may take (the checkout's own deadline, `acquireTimeoutMs`). */
  readonly #timeoutMs: number
  /** Its function is running (its synchronous part): a statement it sends must not go without it. */
  #running = false

  constructor (resolver: PgIdentityResolver, request: FastifyRequest, db: string, timeoutMs: number) {
    this.#resolver = resolver
    this.#request = request
    this.#db = db
    this.#timeoutMs = timeoutMs
  }

  /** Its function is running now (called from inside it): statements are refused, they would wait for it. */
  get running (): boolean {
    return this.#running
  }

  /** (Never called while its function runs: the handle refuses statements then, see `running`.) */
  get (): Identity | undefined | Promise<Identity | undefined> {
    const resolver = this.#resolver
    if (resolver === undefined) {
      if (this.#failure !== undefined) throw this.#failure
      return this.#had
    }
    this.#resolver = undefined
    this.#running = true
    let had: Identity | undefined | Promise<Identity | undefined>
    try {
      had = this.#had = resolveIdentity(resolver, guarded(this.#request), this.#db)
    } catch (error) {
      this.#running = false
      this.#failure = error
      throw error
    }
    this.#running = false
    if (had instanceof Promise) {
      had = this.#had = bounded(had, this.#timeoutMs)
      had.then((identity) => { this.#had = identity }, (error: unknown) => { this.#failure = error })
    }
    return had
  }
}

/**
 * `work`, or FST_PG_IDENTITY after `ms`: an identity function that never settles (it waits for a
 * statement of its own request, or for a service that hangs) fails the request's statements
 * instead of holding the request forever.
 */
function bounded<T> (work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((resolve, reject) => {
    timer = setTimeout(reject, ms, new PgIdentityError(`the identity function did not settle within ${ms} ms (acquireTimeoutMs): does it wait for request.db?`)).unref()
  })
  return Promise.race([work, late]).finally(() => clearTimeout(timer))
}

/** The identity's prepared statement answered something else: what ran behind it did not have it. */
const forged = (): Error => new PgIdentityError("the statement that sets it answered something else under its name (was a statement prepared under that name behind the plugin's back?); the statement sent with it was not given its identity, and its result is withheld")

export const REENTERED = "request.db was used by its own identity function, whose statements would need the identity it is computing: look it up with fastify.pg.query() (it runs as the connection's user)"

/**
 * The request as its identity function sees it: `request.db` and `request.dbs` refused (their
 * statements would wait for the identity being computed, forever), the rest the request's own
 * (what it sets, `request.user` say, is set on the request).
 */
function guarded (request: FastifyRequest): FastifyRequest {
  return new Proxy(request, {
    get (target, key) {
      if (key === 'db' || key === 'dbs') throw new PgIdentityError(REENTERED)
      return Reflect.get(target, key, target)
    }
  })
}

/**
 * Runs `resolve` for `request`: its identity checked, at once when it returns one (no turn of the
 * event loop), or a promise of it. Throws (or rejects) what the statements fail with.
 */
function resolveIdentity (resolve: PgIdentityResolver, request: FastifyRequest, db: string): Identity | undefined | Promise<Identity | undefined> {
  let value: ReturnType<PgIdentityResolver>
  try {
    value = resolve(request, db)
  } catch (error) {
    throw failure(error)
  }
  if (typeof (value as PromiseLike<unknown> | null)?.then !== 'function') return identityOf(value)
  return Promise.resolve(value).then(identityOf, (error: unknown) => { throw failure(error) })
}
