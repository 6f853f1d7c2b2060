import type { FastifyInstance, FastifyPluginAsync, onSendHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import { addDatabase, checkNew, checkRoute, DEFAULT, faceOf, type Database, type PgDecorator } from './databases.js'
import { decorateRequests, endTransaction, shedBy } from './request-dbs.js'
import { alreadyRegistered, PgInvalidOptionError } from './errors.js'
import { resolveOptions, type PgPoolOptions, type ResolvedOptions } from './options.js'
import { Pool, type PgPool } from './pool.js'
import { createPressure, registerPressure, type Hub } from './pressure.js'
import type { PgDatabaseName, PgRequestDbs, RequestDb } from './db.js'
import { transactionOutside } from './outside.js'
import { setupRoute, type PgRouteConfig, type RouteSettings } from './route.js'

export {
  PgAcquireTimeoutError,
  PgAlreadyRegisteredError,
  PgCallbackError,
  PgCancelledError,
  PgCommitUnknownError,
  PgConnectionLostError,
  PgDoubleReleaseError,
  PgIdentityError,
  PgIdentityUnsupportedError,
  PgInvalidOptionError,
  PgNotReadyError,
  PgPoolClosedError,
  PgQueueFullError,
  PgReleasedError,
  PgSaturatedError,
  PgRequestEndedError,
  PgSessionStateError,
  PgSubmittableError,
  PgTransactionAbortedError,
  PgTransactionControlError,
  PgTransactionEndedEarlyError,
  PgTransactionScopeError,
  PgUnavailableError,
  PgUnknownDatabaseError,
  isConnectionError
} from './errors.js'
export type { PgPoolOptions, PgPoolPluginOptions, PgQueryConfig } from './options.js'
export type { PgPool, PoolCounts, PoolStats } from './pool.js'
export type { PgPoolLike } from './pool-contract.js'
export type { PoolCounters, Summary } from './metrics.js'
export type { Pressure } from './pressure.js'
export type { PgRouteConfig } from './route.js'
export type { PgDatabaseName, PgDatabases, PgRequestDbs, RequestDb } from './db.js'
export type { PgDecorator } from './databases.js'
export type { TransactionOptions } from './transaction.js'
export type { PgIdentity, PgIdentityResolver } from './identity.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** This route's database settings: which database, shedding, a transaction around the handler, a statement timeout. */
    pgPool?: PgRouteConfig
  }
  interface FastifyRequest {
    /** The route's database connection (the default database's unless `config.pgPool.db` names another), checked out on first use and always returned. */
    readonly db: RequestDb
    /** Every database by name (`default`, and those declared in `PgDatabases`), each checked out on first use and always returned. */
    readonly dbs: PgRequestDbs
  }
  interface FastifyInstance {
    /** The default database; `fastify.pg.<name>` each named one. */
    pg: PgDecorators
  }
}

/** `fastify.pg`: the default database, with each named one (declared in `PgDatabases`) under its name. */
export type PgDecorators = PgDecorator & { readonly [N in PgDatabaseName]: PgDecorator }

const kChain = Symbol('fastify-pg-pool.chain')

/**
 * What the registrations a context sees share: the hooks and decorations made by the first, one
 * under-pressure fed by every database, and the routes whose database names are checked at ready.
 */
interface Chain {
  readonly databases: Database[]
  readonly pressure: Hub
  /** The plugin registered under-pressure here. */
  underPressure: boolean
  readonly routes: Array<{ scope: FastifyInstance, settings: RouteSettings, where: string }>
}
type Scope = FastifyInstance & { [kChain]?: Chain }

const plugin: FastifyPluginAsync<PgPoolOptions> = async (fastify, opts) => {
  const options = resolveOptions(opts, pg.Client)
  const { name } = options
  const scope = fastify as Scope
  // Before anything else (under-pressure would be registered twice, and blamed).
  // A fastify.pg not made here: @fastify/postgres.
  if (scope[kChain] === undefined && fastify.hasDecorator('pg')) throw alreadyRegistered(undefined)
  checkNew(fastify, name)
  const chain = scope[kChain] ?? wire(scope)
  if (options.underPressure !== false) await withUnderPressure(scope, chain, options)
  const pool = new Pool(options, name === undefined ? fastify.log : fastify.log.child({ db: name }))
  const { pressure } = chain
  const database: Database = {
    name,
    label: name ?? DEFAULT,
    pool,
    closeShed: options.closeShedConnections,
    decorator: {
      pool,
      query: pool.query.bind(pool),
      connect: pool.connect.bind(pool) as PgPool['connect'],
      transaction: (fn, options) => transactionOutside(pool, fastify.log, fn, options, name),
      stats: () => pool.stats(),
      healthCheck: pressure.healthCheck,
      pressureHandler: pressure.pressureHandler
    }
  }
  addDatabase(fastify, database)
  chain.databases.push(database)
  // preClose runs before Fastify waits for in-flight requests: the close deadline starts there.
  fastify.addHook('preClose', (done) => {
    pool.windDown()
    done()
  })
  fastify.addHook('onClose', () => pool.close())
}

/**
 * under-pressure, fed by every database the context sees: registered once, by the first
 * registration that does not say `underPressure: false`, with its options.
 */
async function withUnderPressure (scope: Scope, chain: Chain, options: ResolvedOptions): Promise<void> {
  if (chain.underPressure) {
    if (!options.underPressureGiven) return
    throw new PgInvalidOptionError('underPressure', 'unset: @fastify/under-pressure is registered once, with the options of the first database that registered it (put them there)', 'under-pressure options')
  }
  if (scope.hasDecorator('isUnderPressure')) {
    throw new PgInvalidOptionError(
      'underPressure',
      'false when @fastify/under-pressure is already registered (then give it fastify.pg.healthCheck and fastify.pg.pressureHandler)',
      'under-pressure options while it is registered'
    )
  }
  chain.underPressure = true
  await registerPressure(scope, chain.pressure, options.underPressure as Exclude<ResolvedOptions['underPressure'], false>)
}

/** The first registration a context sees: the decorations and the hooks. */
function wire (scope: Scope): Chain {
  const databases: Database[] = []
  const chain: Chain = { databases, pressure: createPressure(databases, shedBy, scope.log), underPressure: false, routes: [] }
  scope[kChain] = chain

  scope.decorate('pg', { getter (this: FastifyInstance) { return faceOf(this) as unknown as PgDecorators } })
  decorateRequests(scope)
  // A transactional route commits (or rolls back) before its reply is sent.
  const end: onSendHookHandler = async (request, reply, payload) => {
    await endTransaction(request, reply.statusCode < 400)
    return payload
  }
  scope.addHook('onRoute', function (this: FastifyInstance, route) {
    const settings = setupRoute(route, end)
    if (settings?.db !== undefined || settings?.fallback !== undefined) {
      chain.routes.push({ scope: this, settings, where: `(route ${route.method.toString()} ${route.url})` })
    }
  })
  // Every database is registered by now, in whatever order: the names routes gave must exist.
  scope.addHook('onReady', (done) => {
    try {
      for (const { scope, settings, where } of chain.routes.splice(0)) checkRoute(scope, settings, where)
      done()
    } catch (error) {
      done(error as Error)
    }
  })
  return chain
}

/** The plugin: `fastify.register(pgPool, { connectionString, max, ... })`. */
export const pgPool = fp(plugin, { fastify: '5.x', name: 'fastify-pg-pool' })
export default pgPool
