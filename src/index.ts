import type { FastifyPluginAsync, FastifyReply, FastifyRequest, onSendHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import { PgAlreadyRegisteredError, PgInvalidOptionError, PgNotReadyError } from './errors.js'
import { resolveOptions, type PgPoolOptions } from './options.js'
import { Pool, type PgPool, type PoolStats } from './pool.js'
import { createPressure, registerPressure, type Pressure } from './pressure.js'
import type { RequestDb } from './db.js'
import { RequestHandle } from './request-db.js'
import { transactionOutside } from './outside.js'
import type { TransactionOptions } from './transaction.js'
import { routeSettings, setupRoute, type PgRouteConfig } from './route.js'

export {
  PgAcquireTimeoutError,
  PgAlreadyRegisteredError,
  PgCallbackError,
  PgCancelledError,
  PgCommitUnknownError,
  PgConnectionLostError,
  PgDoubleReleaseError,
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
  isConnectionError
} from './errors.js'
export type { PgPoolOptions, PgPoolPluginOptions, PgQueryConfig } from './options.js'
export type { PgPool, PoolCounts, PoolStats } from './pool.js'
export type { PgPoolLike } from './pool-contract.js'
export type { PoolCounters, Summary } from './metrics.js'
export type { Pressure } from './pressure.js'
export type { PgRouteConfig } from './route.js'
export type { RequestDb } from './db.js'
export type { TransactionOptions } from './transaction.js'

/** `fastify.pg` */
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

declare module 'fastify' {
  interface FastifyContextConfig {
    /** This route's database settings: shedding, a transaction around the handler, a statement timeout. */
    pgPool?: PgRouteConfig
  }
  interface FastifyRequest {
    /** The request's database connection, checked out on first use and always returned. */
    readonly db: RequestDb
  }
  interface FastifyInstance {
    pg: PgDecorator
  }
}

const kReply = Symbol('fastify-pg-pool.reply')
const kHandle = Symbol('fastify-pg-pool.handle')

interface Internals {
  [kReply]: FastifyReply | null
  [kHandle]: RequestHandle | null
}

const plugin: FastifyPluginAsync<PgPoolOptions> = async (fastify, opts) => {
  // Before anything else (under-pressure would be registered twice, and blamed).
  if (fastify.hasDecorator('pg')) throw new PgAlreadyRegisteredError()
  const options = resolveOptions(opts, pg.Client)
  if (options.underPressure !== false && fastify.hasDecorator('isUnderPressure')) {
    throw new PgInvalidOptionError(
      'underPressure',
      'false when @fastify/under-pressure is already registered (then give it fastify.pg.healthCheck and fastify.pg.pressureHandler)',
      'under-pressure options while it is registered'
    )
  }
  const pool = new Pool(options, fastify.log)
  const pressure = options.underPressure === false
    ? createPressure(pool, fastify.log)
    : await registerPressure(fastify, pool, options.underPressure)

  fastify.decorate('pg', {
    pool,
    query: pool.query.bind(pool),
    connect: pool.connect.bind(pool) as PgPool['connect'],
    transaction: (fn, options) => transactionOutside(pool, fastify.log, fn, options),
    stats: () => pool.stats(),
    healthCheck: pressure.healthCheck,
    pressureHandler: pressure.pressureHandler
  })
  fastify.decorateRequest(kReply, null)
  fastify.decorateRequest(kHandle, null)
  fastify.decorateRequest('db', {
    getter (this: FastifyRequest) {
      const request = this as FastifyRequest & Internals
      const reply = request[kReply]
      if (reply === null) throw new PgNotReadyError()
      if (request[kHandle] !== null) return request[kHandle]
      const settings = routeSettings((request.routeOptions.config as { pgPool?: PgRouteConfig }).pgPool)
      return (request[kHandle] = new RequestHandle(pool, request, reply.raw, settings))
    }
  })
  // A transactional route commits (or rolls back) before its reply is sent.
  const endTransaction: onSendHookHandler = async (request, reply, payload) => {
    await (request as FastifyRequest & Internals)[kHandle]?.endTransaction(reply.statusCode < 400)
    return payload
  }
  fastify.addHook('onRoute', (route) => setupRoute(route, endTransaction))
  // The handle needs the response to learn when the request ends; nothing else runs per request.
  fastify.addHook('onRequest', (request, reply, done) => {
    (request as FastifyRequest & Internals)[kReply] = reply
    done()
  })
  // preClose runs before Fastify waits for in-flight requests: the close deadline starts there.
  fastify.addHook('preClose', (done) => {
    pool.windDown()
    done()
  })
  fastify.addHook('onClose', () => pool.close())
}

/** The plugin: `fastify.register(pgPool, { connectionString, max, ... })`. */
export const pgPool = fp(plugin, { fastify: '5.x', name: 'fastify-pg-pool' })
export default pgPool
