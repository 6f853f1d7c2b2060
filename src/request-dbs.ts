/**
 * The request's side of several databases: `request.db` (the route's database) and `request.dbs`
 * (each by name), one handle per database a request uses; and which saturated databases a
 * request's route uses, for shedding.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { PgRequestDbs } from './db.js'
import { databasesOf, DEFAULT, faceOf, findDatabase, noDefault, type Database, type Face } from './databases.js'
import { PgNotReadyError } from './errors.js'
import { RequestHandle } from './request-db.js'
import { knownSettings, routeSettings, type RouteSettings } from './route.js'

/**
 * The database of a route (its `db` or `fallback`, or the default one): a name a route gives was
 * checked when the app got ready, so only the default one can be missing here.
 */
function databaseNamed (scope: FastifyInstance, name: string | undefined): Database {
  const database = findDatabase(scope, name)
  if (database === undefined) throw noDefault()
  return database
}

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
