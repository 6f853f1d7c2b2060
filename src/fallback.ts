import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { Conn } from './conn.js'
import { PgAcquireTimeoutError, PgQueueFullError, PgUnavailableError } from './errors.js'
import type { AcquireOptions, Pool } from './pool.js'

/** Checkout failures that say a database cannot serve now, where a fallback can. */
const FALLS_BACK = [PgUnavailableError, PgAcquireTimeoutError, PgQueueFullError]

/**
 * How long the routes with a fallback skip a database after a checkout there failed them, before
 * one of their requests tries it again. A database that does not answer costs a checkout its
 * whole deadline: paid once a second, not by every request.
 */
const SKIP_MS = 1000

/** When a route with a fallback last failed to get a connection from each database (or went to try it again). */
const failedAt = new WeakMap<Pool, number>()

/** Whether a request of a route with a fallback should try its own database first. */
function worthTrying (pool: Pool, fallback: Pool): boolean {
  if (fallback.saturated()) return true // nowhere better to go
  if (pool.saturated()) return false
  const at = failedAt.get(pool)
  if (at === undefined) return true
  const now = performance.now()
  if (now - at < SKIP_MS) return false
  // This request tries it; the others go on skipping it meanwhile.
  failedAt.set(pool, now)
  return true
}

/**
 * A checkout for a route with `fallback`: on its own database, unless that one is saturated or
 * failed such a checkout in the last second; on the fallback when it cannot serve (down,
 * unreachable, saturated). The request stays on the database it got its connection from.
 */
export async function acquireOrFallBack (pool: Pool, fallback: Pool, options: AcquireOptions, log: FastifyBaseLogger): Promise<{ pool: Pool, conn: Conn }> {
  if (worthTrying(pool, fallback)) {
    try {
      const conn = await pool.acquire(options)
      failedAt.delete(pool)
      return { pool, conn }
    } catch (error) {
      // A request that ended meanwhile goes nowhere else.
      if (!FALLS_BACK.some((type) => error instanceof type) || options.signal?.aborted === true) throw error
      failedAt.set(pool, performance.now())
      log.debug({ err: error }, 'fastify-pg-pool: no connection from the route\'s database; falling back')
    }
  }
  return { pool: fallback, conn: await fallback.acquire(options) }
}
