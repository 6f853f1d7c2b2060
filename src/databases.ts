import type { FastifyInstance } from 'fastify'
import type { RequestDb } from './db.js'
import { alreadyRegistered, PgInvalidOptionError, PgUnknownDatabaseError } from './errors.js'
import type { Pool, PgPool } from './pool.js'
import type { Pressure } from './pressure.js'
import type { RouteSettings } from './route.js'
import type { TransactionOptions } from './transaction.js'

/** `fastify.pg` (the default database), and each `fastify.pg.<name>`. */
export interface PgDecorator extends Pressure {
  /** The pool behind `request.db`; `connect()` checks out a client for work outside a request. */
  readonly pool: PgPool
  /** One statement on a connection checked out for it alone (outside a request). */
  readonly query: PgPool['query']
  /** `pool.connect()`: a client for work outside a request, returned with `release()`. */
  readonly connect: PgPool['connect']
  /**
   * Runs `fn` in a transaction outside a request (a job, a script): BEGIN at once, COMMIT when
   * `fn` resolves, ROLLBACK when it throws. `fn` gets a `db` like `request.db` (nested
   * `transaction()` calls and an ORM on `db.pool` make savepoints), refused once `fn` has
   * settled; the connection goes back then.
   */
  transaction<T>(fn: (db: RequestDb) => Promise<T>, options?: TransactionOptions): Promise<T>
  /**
   * Connections and checkouts now, counters since start, and wait and hold times (p50, p90, p99,
   * max) over the last minute. JSON-serialisable, never holds a secret.
   */
  stats (): PoolStats
}
type PoolStats = ReturnType<PgPool['stats']>

/** One registered database. */
export interface Database {
  /** Its `name` at register; `undefined` for the default one. */
  readonly name: string | undefined
  /** Its name in messages, logs and `request.dbs`: `default` for the default one. */
  readonly label: string
  readonly pool: Pool
  /** `fastify.pg` for the default one, `fastify.pg.<name>` for the others. */
  readonly decorator: PgDecorator
  /** Its shed requests' connections are closed (`closeShedConnections`). */
  readonly closeShed: boolean
}

/*
 * Where the databases live. Each Fastify context that registers one, and each of its parents,
 * has a "face" (the object `fastify.pg` returns there): the default database's members, and each
 * named database's decorator under its name. A context's face inherits from its parent's, as the
 * context inherits from its parent: a database registered in a context is seen there and in its
 * children, never in its parent or its siblings, whatever the order of registration.
 */
const kFace = Symbol('fastify-pg-pool.face')
const kDefault = Symbol('fastify-pg-pool.default')
const kDatabase = Symbol('fastify-pg-pool.database')
export const DEFAULT = 'default'
const MEMBERS = ['pool', 'query', 'connect', 'transaction', 'stats', 'healthCheck', 'pressureHandler'] as const

export type Face = Record<string | symbol, unknown> & { [kDefault]?: Database }
type Scope = FastifyInstance & { [kFace]?: Face }

export const noDefault = (): Error => new PgUnknownDatabaseError(
  'No default database is registered in this context, only named ones: register fastify-pg-pool without `name`, or name the database (fastify.pg.<name>, request.dbs.<name>, a route\'s config.pgPool.db)'
)

/**
 * The top of every face's prototype chain: a context with named databases only, whose default
 * members fail with a coded error. (An unknown name is `undefined`, as on any object: Node's own
 * inspection reads properties no one declared.)
 */
const NO_DEFAULT: Face = Object.create(Object.prototype)
for (const member of MEMBERS) Object.defineProperty(NO_DEFAULT, member, { get: () => { throw noDefault() } })

function isInstance (value: unknown): value is Scope {
  return value !== null && typeof (value as { register?: unknown }).register === 'function'
}

/** The context's own face, made (with its parents') if it has none yet. */
function ownFace (scope: Scope): Face {
  if (Object.hasOwn(scope, kFace)) return scope[kFace] as Face
  const parent: unknown = Object.getPrototypeOf(scope)
  const face: Face = Object.create(isInstance(parent) ? ownFace(parent) : NO_DEFAULT)
  scope[kFace] = face
  return face
}

/** `fastify.pg` in a context: its face (a context without databases of its own sees its parent's). */
export function faceOf (scope: FastifyInstance): Face {
  // (Every context that can ask has one: `fastify.pg` and the hooks come with a first database.)
  return (scope as Scope)[kFace] as Face
}

const kRegistered = Symbol('fastify-pg-pool.registered')
/** Every database registered in an app, and the context it was registered in: kept on the app's root instance. */
type Registered = Array<{ readonly scope: object, readonly database: Database }>

function registeredIn (scope: FastifyInstance): Registered {
  let root: object = scope
  for (let parent: unknown = Object.getPrototypeOf(root); isInstance(parent); parent = Object.getPrototypeOf(parent)) root = parent
  const holder = root as { [kRegistered]?: Registered }
  return (holder[kRegistered] ??= [])
}

/** `other` is `scope` or one of its parents: what is registered there is seen in `scope`. */
const seenFrom = (scope: object, other: object): boolean => other === scope || Object.prototype.isPrototypeOf.call(other, scope)

/**
 * Fails if a database of this name (or a default one) is registered in this context, a parent
 * or a child (whichever came first): one would shadow the other. Siblings may share a name.
 */
export function checkNew (scope: FastifyInstance, name: string | undefined): void {
  const related = (other: object): boolean => seenFrom(scope, other) || seenFrom(other, scope)
  if (registeredIn(scope).some((entry) => entry.database.name === name && related(entry.scope))) throw alreadyRegistered(name)
}

/** Adds a database to the context it was registered in (`checkNew` said it was new). */
export function addDatabase (scope: FastifyInstance, database: Database): void {
  registeredIn(scope).push({ scope, database })
  const face = ownFace(scope as Scope)
  if (database.name === undefined) {
    face[kDefault] = database
    for (const member of MEMBERS) Object.defineProperty(face, member, { value: database.decorator[member], enumerable: true })
  } else {
    Object.defineProperty(database.decorator, kDatabase, { value: database })
    Object.defineProperty(face, database.name, { value: database.decorator, enumerable: true })
  }
}

/** The database of a name (`'default'` or `undefined`: the default one) seen in a context, if any. */
export function findDatabase (scope: FastifyInstance, name: string | undefined): Database | undefined {
  const face = faceOf(scope)
  if (name === undefined || name === DEFAULT) return face[kDefault]
  // (A route's names are checked when it is added: never a member of fastify.pg here.)
  return (face[name] as { [kDatabase]?: Database } | undefined)?.[kDatabase]
}

/**
 * Every database seen in a context, the default one first (no two of them share a name: one
 * registered where another of its name is seen is refused).
 */
export function databasesOf (scope: FastifyInstance): Database[] {
  const seen = registeredIn(scope).filter((entry) => seenFrom(scope, entry.scope)).map((entry) => entry.database)
  return [...seen.filter((d) => d.name === undefined), ...seen.filter((d) => d.name !== undefined)]
}

/**
 * Checks, once the app is ready (every database registered, in any order), that the databases
 * routes name exist where the routes are.
 */
export function checkRoute (scope: FastifyInstance, settings: RouteSettings, where: string): void {
  for (const key of ['db', 'fallback'] as const) {
    const name = settings[key]
    if (name !== undefined && findDatabase(scope, name) === undefined) {
      // (The context sees one at least: the registration that added the hook that saw the route.)
      const known = databasesOf(scope).map((d) => `\`${d.label}\``)
      throw new PgInvalidOptionError(`config.pgPool.${key}`, `the name of a database registered in this context or a parent (${known.join(', ')} ${known.length === 1 ? 'is' : 'are'}) ${where}`, `\`${name}\``)
    }
  }
}
