import createError from '@fastify/error'

/**
 * Every error this plugin raises has a stable `code`; match on it, never on the message.
 * The 503s carry a `headers` object with `retry-after`, which Fastify's error handler applies
 * to the reply.
 */

/** An option has the wrong type or range. Thrown by `register`. */
export const PgInvalidOptionError = createError<'FST_PG_INVALID_OPTION', [string, string, string]>(
  'FST_PG_INVALID_OPTION',
  'Expected `%s` to be %s, got %s',
  500,
  TypeError
)

/** No connection could be checked out within `acquireTimeoutMs`. */
export const PgAcquireTimeoutError = createError<'FST_PG_ACQUIRE_TIMEOUT', 503, [number]>(
  'FST_PG_ACQUIRE_TIMEOUT',
  'No database connection became available within %d ms',
  503
)

/** The wait queue is full (`maxWaiting`): the checkout fails at once instead of queuing. */
export const PgQueueFullError = createError<'FST_PG_QUEUE_FULL', 503, [number]>(
  'FST_PG_QUEUE_FULL',
  'Too many requests are waiting for a database connection (maxWaiting %d)',
  503
)

/** The pool is saturated: the request is shed in onRequest, before its handler runs. */
export const PgSaturatedError = createError<'FST_PG_SATURATED', 503, []>(
  'FST_PG_SATURATED',
  'The database connection pool is saturated; try again later',
  503
)

/** Opening a new connection failed: the database refused it or could not be reached. */
export const PgUnavailableError = createError<'FST_PG_UNAVAILABLE', 503, [string, { cause: unknown }?]>(
  'FST_PG_UNAVAILABLE',
  'The database is unavailable: %s',
  503
)

/** The pool is closing (`app.close()`): no new checkouts. */
export const PgPoolClosedError = createError<'FST_PG_POOL_CLOSED', 503, []>(
  'FST_PG_POOL_CLOSED',
  'The database pool is closed',
  503
)

/** `request.db` was used after its request ended; the query was not sent. */
export const PgRequestEndedError = createError<'FST_PG_REQUEST_ENDED', 500, []>(
  'FST_PG_REQUEST_ENDED',
  'request.db was used after the request ended; the query was not sent',
  500
)

/** A client from `fastify.pg.pool.connect()` was used after its `release()`; the query was not sent. */
export const PgReleasedError = createError<'FST_PG_RELEASED', 500, []>(
  'FST_PG_RELEASED',
  'This client was already released; the query was not sent',
  500
)

/** `request.db` was read before this plugin's `onRequest` hook ran for the request. */
export const PgNotReadyError = createError<'FST_PG_NOT_READY', 500, []>(
  'FST_PG_NOT_READY',
  'request.db was used before the fastify-pg-pool onRequest hook ran; register the plugin before hooks that query',
  500
)

/** A client from `fastify.pg.pool.connect()` was released twice. */
export const PgDoubleReleaseError = createError<'FST_PG_DOUBLE_RELEASE', 500, []>(
  'FST_PG_DOUBLE_RELEASE',
  'release() was called twice for the same checkout',
  500
)

/**
 * Behind PgBouncer in transaction mode (`pgbouncer: true`), a statement that may leave state on
 * the session was sent outside a transaction. PgBouncer would leave that state on whichever
 * server connection ran it, for another client to find, or lose it before the next statement.
 */
export const PgSessionStateError = createError<'FST_PG_SESSION_STATE', 500, []>(
  'FST_PG_SESSION_STATE',
  'Behind PgBouncer in transaction mode, session state (SET, SET ROLE, LISTEN, PREPARE, temporary tables, advisory locks) does not last beyond one transaction; the statement was not sent. Run it inside a transaction, with SET LOCAL or set_config(..., true)',
  500
)

/**
 * The route's transaction (`config.pgPool.transaction`) could not commit: a statement in it
 * failed and the handler went on, so PostgreSQL rolled it back. The reply cannot claim success.
 */
export const PgTransactionAbortedError = createError<'FST_PG_TRANSACTION_ABORTED', 500, []>(
  'FST_PG_TRANSACTION_ABORTED',
  "A statement in the route's transaction failed, so it was rolled back instead of committed",
  500
)

/**
 * Adds the `Retry-After` header (whole seconds) to a 503 error. Fastify copies `error.headers`
 * onto the reply before serialising the error.
 */
export function withRetryAfter<E extends Error> (error: E, seconds: number): E {
  (error as E & { headers: Record<string, string> }).headers = { 'retry-after': String(seconds) }
  return error
}

const CONNECTION_ERROR_CODES = new Set([
  '57P01', // admin_shutdown: pg_terminate_backend, fast shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now: starting up / shutting down
  '57P05', // idle_session_timeout
  '25P03', // idle_in_transaction_session_timeout
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH'
])

const CONNECTION_ERROR_MESSAGES = [
  'Connection terminated',
  'Client has encountered a connection error',
  'Client was closed and is not queryable'
]

/**
 * True when the error means the connection itself can no longer be trusted: the session is
 * gone or in an unknown state. Such a client is destroyed, never pooled again.
 */
export function isConnectionError (error: unknown): boolean {
  if (error === null || typeof error !== 'object') return false
  const code = (error as { code?: unknown }).code
  if (typeof code === 'string' && (code.startsWith('08') || CONNECTION_ERROR_CODES.has(code))) return true
  const message = (error as { message?: unknown }).message
  return typeof message === 'string' && CONNECTION_ERROR_MESSAGES.some((m) => message.startsWith(m))
}

/**
 * pg's `query_timeout` fired: the server may still be running the statement and the client is
 * left with a query it cannot finish. That connection must be destroyed, but the server is not
 * known to be gone (so its peers are not suspect, and the statement is not retried).
 */
export function isReadTimeout (error: unknown): boolean {
  return error instanceof Error && error.message === 'Query read timeout'
}
