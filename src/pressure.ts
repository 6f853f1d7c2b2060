import createError from '@fastify/error'
import underPressure, { type FastifyUnderPressureOptions } from '@fastify/under-pressure'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { PgSaturatedError } from './errors.js'
import type { Database } from './databases.js'

type HealthCheck = NonNullable<FastifyUnderPressureOptions['healthCheck']>
type PressureHandler = NonNullable<FastifyUnderPressureOptions['pressureHandler']>

/** What `fastify.pg` offers to an under-pressure registered by the app itself. */
export interface Pressure {
  /** under-pressure `healthCheck`: false while the pool is saturated; else `{ pool: stats }`. */
  healthCheck: HealthCheck
  /** under-pressure `pressureHandler`: the coded 503 for saturation, honouring route opt-outs. */
  pressureHandler: PressureHandler
}

const UNDER_PRESSURE_CHECK = 'healthCheck' // under-pressure's TYPE_HEALTH_CHECK
const saturated = new PgSaturatedError()
const SATURATED_BODY = JSON.stringify({
  statusCode: 503,
  code: saturated.code,
  error: 'Service Unavailable',
  message: saturated.message
})
const DIAGNOSIS_EVERY_MS = 10_000
/** How often under-pressure asks; the pool's state is read, not computed, so this is cheap. */
const CHECK_INTERVAL_MS = 25

/**
 * The databases' saturation as under-pressure sees it: a health check that fails while one of
 * them is saturated, and a pressure handler that answers the requests of the routes using a
 * saturated one with `FST_PG_SATURATED` and a `Retry-After` from its measured rate of returns.
 * `shedBy` says which saturated databases a request's route uses (none: it is served).
 */
export function createPressure (
  databases: readonly Database[],
  shedBy: (request: FastifyRequest) => Database[] | undefined,
  log: FastifyInstance['log']
): Hub {
  /** The app's own check and handler, from the under-pressure options the plugin registered it with. */
  let userCheck: HealthCheck | undefined
  let userHandler: PressureHandler | undefined
  /** Why the last check failed: a pool, or the app's own health check. */
  let cause: 'pool' | 'user' | undefined
  const lastDiagnosis = new WeakMap<Database, number>()

  const diagnose = (database: Database): void => {
    const now = Date.now()
    if (now - (lastDiagnosis.get(database) ?? -Infinity) < DIAGNOSIS_EVERY_MS) return
    lastDiagnosis.set(database, now)
    const { pool } = database
    const byRoute: Record<string, number> = {}
    let oldest: { route: string, heldMs: number } | undefined
    for (const { holder, heldMs } of pool.busy()) {
      const route = typeof holder === 'string' ? holder : `${holder.method} ${holder.routeOptions.url ?? '(no route)'}`
      byRoute[route] = (byRoute[route] ?? 0) + 1
      if (oldest === undefined || heldMs > oldest.heldMs) oldest = { route, heldMs: Math.round(heldMs) }
    }
    log.warn({
      ...(database.name === undefined ? {} : { db: database.name }),
      pool: pool.counts(),
      oldestWaitMs: Math.round(pool.oldestWaitMs()),
      checkedOutByRoute: byRoute,
      oldestHold: oldest
    }, 'fastify-pg-pool: pool saturated; shedding requests with 503 until it drains')
  }

  const healthCheck: HealthCheck = async (fastify) => {
    const user = userCheck === undefined ? true : await userCheck(fastify)
    if (user === false) {
      cause = 'user'
      return false
    }
    let saturated = false
    for (const database of databases) {
      if (database.pool.saturated()) {
        saturated = true
        diagnose(database)
      }
    }
    if (saturated) {
      cause = 'pool'
      return false
    }
    cause = undefined
    return { ...(typeof user === 'object' ? user : {}), ...countsOf(databases) }
  }

  // under-pressure sends what a pressure handler returns (its type declarations omit that).
  const pressureHandler = ((request: FastifyRequest, reply: FastifyReply, type: string, value: number | undefined) => {
    if (type === UNDER_PRESSURE_CHECK && cause === 'pool') {
      // under-pressure's verdict is as old as its last check: a pool that drained since serves.
      const by = shedBy(request)
      if (by === undefined) return
      // The cheapest answer there is: under overload this runs for most requests, and every
      // microsecond spent here is taken from the requests being served. The body is Fastify's
      // error shape, built once; no error object, no stack, no serializer. The keep-alive
      // connection stays open unless asked (closeShedConnections): a retry on it costs the
      // server less than a new connection (measured in bench/overload.ts).
      let retryAfter = 0
      let close = false
      for (const database of by) {
        retryAfter = Math.max(retryAfter, database.pool.retryAfter())
        close ||= database.closeShed
      }
      for (const { pool } of by) pool.shed(request, retryAfter)
      reply.code(503).header('retry-after', retryAfter).type('application/json; charset=utf-8')
      if (close) reply.header('connection', 'close')
      return SATURATED_BODY
    }
    return userHandler?.(request, reply, type, value)
  }) as PressureHandler

  return {
    healthCheck,
    pressureHandler,
    use (check, handler) {
      userCheck = check
      userHandler = handler
    }
  }
}

/** The pressure of every database a context sees; `use` adds the app's own check and handler. */
export interface Hub extends Pressure {
  use (check: HealthCheck | undefined, handler: PressureHandler): void
}

/** What the health check (and under-pressure's status route) shows: the default's `pool`, and every database's in `pools` when there are named ones. */
function countsOf (databases: readonly Database[]): object {
  const counts: { pool?: object, pools?: Record<string, object> } = {}
  for (const database of databases) {
    if (database.name === undefined) counts.pool = database.pool.counts()
    if (databases.length > 1 || database.name !== undefined) (counts.pools ??= {})[database.label] = database.pool.counts()
  }
  return counts
}

const UnderPressureError = createError('FST_UNDER_PRESSURE', 'Service Unavailable', 503)

/**
 * Registers @fastify/under-pressure with the app's options, fed by the pool. Other pressure
 * (event loop, memory, the app's own health check) keeps under-pressure's behaviour: its own
 * pressure handler if one was given, else a 503 with its `retryAfter`.
 */
export async function registerPressure (fastify: FastifyInstance, pressure: Hub, options: FastifyUnderPressureOptions): Promise<void> {
  const retryAfter = options.retryAfter ?? 10
  const fallback: PressureHandler = options.pressureHandler ?? ((_request: FastifyRequest, reply: FastifyReply) => {
    reply.header('retry-after', retryAfter)
    return Promise.reject(new UnderPressureError())
  })
  pressure.use(options.healthCheck, fallback)
  await fastify.register(underPressure, {
    healthCheckInterval: CHECK_INTERVAL_MS,
    ...options,
    exposeStatusRoute: withPoolInStatus(options.exposeStatusRoute),
    healthCheck: pressure.healthCheck,
    pressureHandler: pressure.pressureHandler
  })
}

const count = { type: 'integer' }
const POOL_STATS_SCHEMA = {
  type: 'object',
  properties: { total: count, idle: count, active: count, waiting: count }
}
const POOLS_SCHEMA = { type: 'object', additionalProperties: POOL_STATS_SCHEMA }

/** The status route's response schema, extended so the pool's stats are not stripped from it. */
function withPoolInStatus (route: FastifyUnderPressureOptions['exposeStatusRoute']): FastifyUnderPressureOptions['exposeStatusRoute'] {
  if (route === undefined || route === false) return route
  const base: { url?: string, routeOpts?: object, routeResponseSchemaOpts?: object } =
    route === true ? {} : typeof route === 'string' ? { url: route } : route
  return {
    routeOpts: {},
    ...base,
    routeResponseSchemaOpts: { pool: POOL_STATS_SCHEMA, pools: POOLS_SCHEMA, ...base.routeResponseSchemaOpts }
  }
}
