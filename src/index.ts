import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import { PgNotReadyError } from './errors.js'
import { resolveOptions, type PgPoolOptions } from './options.js'
import { PgPool, type PoolStats } from './pool.js'
import { RequestHandle, type RequestDb } from './request-db.js'

export {
  PgAcquireTimeoutError,
  PgDoubleReleaseError,
  PgInvalidOptionError,
  PgNotReadyError,
  PgPoolClosedError,
  PgReleasedError,
  PgRequestEndedError,
  PgUnavailableError,
  isConnectionError
} from './errors.js'
export type { PgPoolOptions, PgPoolPluginOptions, PgQueryConfig } from './options.js'
export type { PgPool, PoolStats } from './pool.js'
export type { RequestDb } from './request-db.js'

/** `fastify.pg` */
export interface PgDecorator {
  /** The pool behind `request.db`; `connect()` checks out a client for work outside a request. */
  readonly pool: PgPool
  /** One statement on a connection checked out for it alone (outside a request). */
  readonly query: PgPool['query']
  /** Pool counters; JSON-serialisable, never holds a secret. */
  stats (): PoolStats
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The request's database connection, checked out on first use and always returned. */
    readonly db: RequestDb
  }
  interface FastifyInstance {
    readonly pg: PgDecorator
  }
}

const kReply = Symbol('fastify-pg-pool.reply')
const kHandle = Symbol('fastify-pg-pool.handle')

interface Internals {
  [kReply]: FastifyReply | null
  [kHandle]: RequestHandle | null
}

const plugin: FastifyPluginAsync<PgPoolOptions> = async (fastify, opts) => {
  const pool = new PgPool(resolveOptions(opts, pg.Client), fastify.log)

  fastify.decorate('pg', { pool, query: pool.query.bind(pool), stats: () => pool.stats() })
  fastify.decorateRequest(kReply, null)
  fastify.decorateRequest(kHandle, null)
  fastify.decorateRequest('db', {
    getter (this: FastifyRequest) {
      const request = this as FastifyRequest & Internals
      const reply = request[kReply]
      if (reply === null) throw new PgNotReadyError()
      return (request[kHandle] ??= new RequestHandle(pool, request.log, reply.raw))
    }
  })
  // The handle needs the response to learn when the request ends; nothing else runs per request.
  fastify.addHook('onRequest', (request, reply, done) => {
    (request as FastifyRequest & Internals)[kReply] = reply
    done()
  })
  // preClose runs before Fastify waits for in-flight requests: the close deadline starts there.
  fastify.addHook('preClose', (done) => {
    pool.drain()
    done()
  })
  fastify.addHook('onClose', () => pool.close())
}

/** The plugin: `fastify.register(pgPool, { connectionString, max, ... })`. */
export const pgPool = fp(plugin, { fastify: '5.x', name: 'fastify-pg-pool' })
export default pgPool
