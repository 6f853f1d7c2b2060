import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { PgRequestDbs, RequestDb } from './db.js'
import { alreadyRegistered, PgInvalidOptionError, PgNotReadyError, PgUnknownDatabaseError } from './errors.js'
import type { Pool, PgPool } from './pool.js'
import type { Pressure } from './pressure.js'
import { RequestHandle } from './request-db.js'
import { knownSettings, routeSettings, type RouteSettings } from './route.js'
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
const DEFAULT = 'default'
const MEMBERS = ['pool', 'query', 'connect', 'transaction', 'stats', 'healthCheck', 'pressureHandler'] as const

type Face = Record<string | symbol, unknown> & { [kDefault]?: Database }
type Scope = FastifyInstance & { [kFace]?: Face }

const noDefault = (): Error => new PgUnknownDatabaseError(
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
/** Every database registered in an app, and where: kept on the app's root instance. */
type Registered = Array<{ readonly scope: object, readonly name: string | undefined }>

function registeredIn (scope: FastifyInstance): Registered {
  let root: object = scope
  for (let parent: unknown = Object.getPrototypeOf(root); isInstance(parent); parent = Object.getPrototypeOf(parent)) root = parent
  const holder = root as { [kRegistered]?: Registered }
  return (holder[kRegistered] ??= [])
}

/**
 * Fails if a database of this name (or a default one) is registered in this context, a parent
 * or a child (whichever came first): one would shadow the other. Siblings may share a name.
 */
export function checkNew (scope: FastifyInstance, name: string | undefined): void {
  const related = (other: object): boolean => other === scope || Object.prototype.isPrototypeOf.call(other, scope) || Object.prototype.isPrototypeOf.call(scope, other)
  if (registeredIn(scope).some((entry) => entry.name === name && related(entry.scope))) throw alreadyRegistered(name)
}

/** Adds a database to the context it was registered in (`checkNew` said it was new). */
export function addDatabase (scope: FastifyInstance, database: Database): void {
  registeredIn(scope).push({ scope, name: database.name })
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
 * The database of a route (its `db` or `fallback`, or the default one): a name a route gives was
 * checked when the app got ready, so only the default one can be missing here.
 */
function databaseNamed (scope: FastifyInstance, name: string | undefined): Database {
  const database = findDatabase(scope, name)
  if (database === undefined) throw noDefault()
  return database
}

/** Every database seen in a context, the default one first. */
function databasesOf (scope: FastifyInstance): Database[] {
  const face = faceOf(scope)
  const found = face[kDefault] === undefined ? [] : [face[kDefault]]
  for (let f: object = face; f !== NO_DEFAULT; f = Object.getPrototypeOf(f)) {
    for (const key of Object.keys(f)) {
      const database = (f as Face)[key] as { [kDatabase]?: Database } | undefined
      if (database?.[kDatabase] !== undefined && findDatabase(scope, key) === database[kDatabase]) found.push(database[kDatabase])
    }
  }
  return found
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

// The request's side.
const kReply = Symbol('fastify-pg-pool.reply')
const kHandle = Symbol('fastify-pg-pool.handle')
const kOthers = Symbol('fastify-pg-pool.others')
const kDbs = Symbol('fastify-pg-pool.dbs')
const kRequest = Symbol('fastify-pg-pool.request')

interface Internals {
  [kReply]: FastifyReply | null
  /** `request.db`: the handle of the route's database. */
  [kHandle]: RequestHandle | null
  /** The handles of the other databases the request used. */
  [kOthers]: Map<Database, RequestHandle> | null
  [kDbs]: object | null
}
type Req = FastifyRequest & Internals

/** Routes seen using databases other than their own (`request.dbs.<name>`): shed with them too. */
const alsoUses = new WeakMap<object, Set<Database>>()
/** The settings of the databases a route uses besides its own: its statement timeout, no transaction. */
const otherSettings = new WeakMap<RouteSettings, RouteSettings>()

/** The request decorations (`request.db`, `request.dbs`) and the hook that gives them the reply. */
export function decorateRequests (fastify: FastifyInstance): void {
  fastify.decorateRequest(kReply, null)
  fastify.decorateRequest(kHandle, null)
  fastify.decorateRequest(kOthers, null)
  fastify.decorateRequest(kDbs, null)
  fastify.decorateRequest('db', { getter (this: FastifyRequest) { return requestDb(this as Req) } })
  fastify.decorateRequest('dbs', { getter (this: FastifyRequest) { return requestDbs(this as Req) as PgRequestDbs } })
  // The handles need the response to learn when the request ends; nothing else runs per request.
  fastify.addHook('onRequest', (request, reply, done) => {
    (request as Req)[kReply] = reply
    done()
  })
}

/** The handle of the route's database. */
function requestDb (request: Req): RequestHandle {
  if (request[kHandle] !== null) return request[kHandle]
  const reply = request[kReply]
  if (reply === null) throw new PgNotReadyError()
  const settings = routeSettings((request.routeOptions.config as { pgPool?: object }).pgPool)
  const database = databaseNamed(request.server, settings.db)
  const fallback = settings.fallback === undefined ? undefined : databaseNamed(request.server, settings.fallback)
  return (request[kHandle] = new RequestHandle(database.pool, request, reply.raw, settings, {
    fallback: fallback === undefined ? undefined : { pool: fallback.pool, label: fallback.name },
    label: database.name
  }))
}

/**
 * `request.dbs.<name>`: the handle of a database for this request, the same one each time. The
 * route's own database is `request.db`; on a route with a `fallback`, `request.db` is the handle
 * of the database it got its connection from, once it has one (before, a name gets a handle of
 * its own: the database it names, never a fallback).
 */
function handleOf (request: Req, database: Database): RequestHandle {
  const config = request.routeOptions.config as { pgPool?: object }
  const settings = routeSettings(config.pgPool)
  // A name keeps the handle it gave first.
  const known = request[kOthers]?.get(database)
  if (known !== undefined) return known
  const main = request[kHandle]
  if (main === null ? settings.fallback === undefined && findDatabase(request.server, settings.db) === database : main.where === database.pool) return requestDb(request)
  const reply = request[kReply]
  if (reply === null) throw new PgNotReadyError()
  let others = otherSettings.get(settings)
  if (others === undefined) otherSettings.set(settings, others = { ...settings, transaction: undefined, db: database.name, fallback: undefined })
  const made = new RequestHandle(database.pool, request, reply.raw, others, { label: database.name })
  ;(request[kOthers] ??= new Map()).set(database, made)
  let uses = alsoUses.get(config)
  if (uses === undefined) alsoUses.set(config, uses = new Set())
  uses.add(database)
  return made
}

/** `request.dbs`' prototype for each face: a getter per database seen there. */
const dbsPrototypes = new WeakMap<Face, object>()

function requestDbs (request: Req): object {
  if (request[kDbs] !== null) return request[kDbs]
  const face = faceOf(request.server)
  let prototype = dbsPrototypes.get(face)
  if (prototype === undefined) {
    prototype = {}
    Object.defineProperty(prototype, DEFAULT, { enumerable: true, get (this: { [kRequest]: Req }) { return handleOf(this[kRequest], databaseNamed(this[kRequest].server, undefined)) } })
    for (const database of databasesOf(request.server)) {
      if (database.name === undefined) continue
      Object.defineProperty(prototype, database.name, { enumerable: true, get (this: { [kRequest]: Req }) { return handleOf(this[kRequest], database) } })
    }
    dbsPrototypes.set(face, prototype)
  }
  const dbs = Object.create(prototype) as object
  Object.defineProperty(dbs, kRequest, { value: request })
  return (request[kDbs] = dbs)
}

/** The route's transaction ends (its onSend hook), on the route's database. */
export function endTransaction (request: FastifyRequest, commit: boolean): Promise<void> | undefined {
  return (request as Req)[kHandle]?.endTransaction(commit)
}

const saturated = (database: Database | undefined): database is Database => database !== undefined && database.pool.saturated()

/**
 * The saturated databases a request's route uses (its own, unless its fallback is free; and those
 * its requests were seen to use), if it is to be shed; `undefined` if it is to be served.
 */
export function shedBy (request: FastifyRequest): Database[] | undefined {
  const config = request.routeOptions.config as { pgPool?: { shedding?: unknown } }
  if (config.pgPool?.shedding === false) return undefined
  const settings = knownSettings(config.pgPool)
  const found = new Set<Database>()
  const own = findDatabase(request.server, settings.db)
  if (saturated(own)) {
    const fallback = settings.fallback === undefined ? undefined : findDatabase(request.server, settings.fallback)
    if (fallback === undefined || saturated(fallback)) found.add(own).add(fallback ?? own)
  }
  for (const database of alsoUses.get(config) ?? []) {
    if (saturated(database)) found.add(database)
  }
  return found.size === 0 ? undefined : [...found]
}

export { DEFAULT }
