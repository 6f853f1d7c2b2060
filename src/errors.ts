import createError, { type FastifyErrorConstructor } from '@fastify/error'
import { refusedUnsent, saysLost } from './pg-internals.js'

/**
 * Every error this plugin raises has a stable `code`; match on it, never on the message.
 * The 503s carry a `headers` object with `retry-after`, which Fastify's error handler applies
 * to the reply.
 *
 * Each error's type is written out with @fastify/error's named `FastifyErrorConstructor`: left to
 * inference, the declarations spell it `createError.FastifyErrorConstructor`, a namespace the
 * default import carries only under node16 resolution. Under `moduleResolution: bundler` that
 * import is the package's `default` value alone, and the .d.ts would not compile (TS2503).
 * Optional arguments say `| undefined`, as the inferred types did: under
 * `exactOptionalPropertyTypes` a bare `T?` would turn an explicit `undefined` away.
 */

/** An option has the wrong type or range. Thrown by `register`. */
export const PgInvalidOptionError: FastifyErrorConstructor<{ code: 'FST_PG_INVALID_OPTION' }, [string, string, string]> = createError(
  'FST_PG_INVALID_OPTION',
  'Expected `%s` to be %s, got %s',
  500,
  TypeError
)

/** No connection could be checked out within `acquireTimeoutMs`. */
export const PgAcquireTimeoutError: FastifyErrorConstructor<{ code: 'FST_PG_ACQUIRE_TIMEOUT', statusCode: 503 }, [number]> = createError(
  'FST_PG_ACQUIRE_TIMEOUT',
  'No database connection became available within %d ms (acquire timeout)',
  503
)

/** The wait queue is full (`maxWaiting`): the checkout fails at once instead of queuing. */
export const PgQueueFullError: FastifyErrorConstructor<{ code: 'FST_PG_QUEUE_FULL', statusCode: 503 }, [number]> = createError(
  'FST_PG_QUEUE_FULL',
  'Too many requests are waiting for a database connection (maxWaiting %d)',
  503
)

/** The pool is saturated: the request is shed in onRequest, before its handler runs. */
export const PgSaturatedError: FastifyErrorConstructor<{ code: 'FST_PG_SATURATED', statusCode: 503 }, []> = createError(
  'FST_PG_SATURATED',
  'The database connection pool is saturated; try again later',
  503
)

/** Opening a new connection failed: the database refused it or could not be reached. */
export const PgUnavailableError: FastifyErrorConstructor<{ code: 'FST_PG_UNAVAILABLE', statusCode: 503 }, [string, ({ cause: unknown } | undefined)?]> = createError(
  'FST_PG_UNAVAILABLE',
  'The database is unavailable: %s',
  503
)

/** The pool is closing (`app.close()`): no new checkouts. */
export const PgPoolClosedError: FastifyErrorConstructor<{ code: 'FST_PG_POOL_CLOSED', statusCode: 503 }, []> = createError(
  'FST_PG_POOL_CLOSED',
  'The database pool is closed',
  503
)

/**
 * A running statement the plugin cancelled: its request ended (the client went away, the request
 * timed out), or the app closed past `closeTimeoutMs`. It did not complete (PostgreSQL rolled
 * it back); trying again is safe.
 */
export const PgCancelledError: FastifyErrorConstructor<{ code: 'FST_PG_CANCELLED', statusCode: 503 }, [string, ({ cause: unknown } | undefined)?]> = createError(
  'FST_PG_CANCELLED',
  'The statement was cancelled because %s; it did not complete',
  503
)

/**
 * A callback where the API has none, or in the wrong place: `request.db.query()` returns a promise
 * and would never call it. Thrown at once; nothing was checked out or sent.
 */
export const PgCallbackError: FastifyErrorConstructor<{ code: 'FST_PG_CALLBACK', statusCode: 500 }, [string]> = createError(
  'FST_PG_CALLBACK',
  '%s (nothing was sent)',
  500
)

/**
 * The plugin was registered where the database it would add already exists: a second one without
 * `name` (or after @fastify/postgres), or a `name` already taken in this context or a parent.
 */
export const PgAlreadyRegisteredError: FastifyErrorConstructor<{ code: 'FST_PG_ALREADY_REGISTERED', statusCode: 500 }, [string]> = createError(
  'FST_PG_ALREADY_REGISTERED',
  '%s',
  500
)

/** The message of `PgAlreadyRegisteredError` for a database registered without a name, or with `name`. */
export function alreadyRegistered (name: string | undefined): Error {
  return new PgAlreadyRegisteredError(name === undefined
    ? 'fastify.pg already exists here: fastify-pg-pool (or @fastify/postgres) was registered before without a `name` in this app or a parent context. Give each further database a `name` (fastify.pg.<name>, request.dbs.<name>), and remove @fastify/postgres if it is there'
    : `A database named \`${name}\` is already registered in this context, a parent or a child (one would shadow the other): give each database its own \`name\``)
}

/** The default database was asked for where only named databases are registered. */
export const PgUnknownDatabaseError: FastifyErrorConstructor<{ code: 'FST_PG_UNKNOWN_DATABASE', statusCode: 500 }, [string]> = createError(
  'FST_PG_UNKNOWN_DATABASE',
  '%s',
  500
)

/**
 * `pool.query()` was given a stream or a cursor (a submittable): the pool would have no moment to
 * take its connection back. Check out a client with `pool.connect()` and pass it to `client.query()`.
 */
export const PgSubmittableError: FastifyErrorConstructor<{ code: 'FST_PG_SUBMITTABLE', statusCode: 500 }, []> = createError(
  'FST_PG_SUBMITTABLE',
  'pool.query() cannot run a stream or a cursor: pass it to the query() of a client from pool.connect(), and release that client when it ends',
  500
)

/**
 * The request's identity (the `identity` option) could not be had: its function threw an error
 * without an HTTP status, or returned something that is not an identity. No statement of the
 * request was sent on that database.
 */
export const PgIdentityError: FastifyErrorConstructor<{ code: 'FST_PG_IDENTITY', statusCode: 500 }, [string, ({ cause: unknown } | undefined)?]> = createError(
  'FST_PG_IDENTITY',
  "The request's database identity could not be applied: %s; no statement was sent",
  500
)

/**
 * A statement that cannot carry the request's identity where it was sent: a cursor, stream or
 * COPY, several statements in one string or `queryMode: 'simple'` outside a transaction (only the
 * extended protocol carries the identity's parameters in front of a statement); a statement
 * PostgreSQL refuses inside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ...).
 */
export const PgIdentityUnsupportedError: FastifyErrorConstructor<{ code: 'FST_PG_IDENTITY_UNSUPPORTED', statusCode: 500 }, [string]> = createError(
  'FST_PG_IDENTITY_UNSUPPORTED',
  '%s; the statement was not sent',
  500
)

/** `request.db` was used after its request ended; the query was not sent. */
export const PgRequestEndedError: FastifyErrorConstructor<{ code: 'FST_PG_REQUEST_ENDED', statusCode: 500 }, []> = createError(
  'FST_PG_REQUEST_ENDED',
  'request.db was used after the request ended; the query was not sent',
  500
)

/** A client from `fastify.pg.pool.connect()` was used after its `release()`; the query was not sent. */
export const PgReleasedError: FastifyErrorConstructor<{ code: 'FST_PG_RELEASED', statusCode: 500 }, []> = createError(
  'FST_PG_RELEASED',
  'This client was already released; the query was not sent',
  500
)

/** `request.db` was read before this plugin's `onRequest` hook ran for the request. */
export const PgNotReadyError: FastifyErrorConstructor<{ code: 'FST_PG_NOT_READY', statusCode: 500 }, []> = createError(
  'FST_PG_NOT_READY',
  'request.db was used before the fastify-pg-pool onRequest hook ran; register the plugin before hooks that query',
  500
)

/** A client from `fastify.pg.pool.connect()` was released twice. */
export const PgDoubleReleaseError: FastifyErrorConstructor<{ code: 'FST_PG_DOUBLE_RELEASE', statusCode: 500 }, []> = createError(
  'FST_PG_DOUBLE_RELEASE',
  'release() was called twice for the same checkout',
  500
)

/**
 * Behind PgBouncer in transaction mode (`pgbouncer: true`), a statement that may leave state on
 * the session was sent outside a transaction. PgBouncer would leave that state on whichever
 * server connection ran it, for another client to find, or lose it before the next statement.
 */
export const PgSessionStateError: FastifyErrorConstructor<{ code: 'FST_PG_SESSION_STATE', statusCode: 500 }, []> = createError(
  'FST_PG_SESSION_STATE',
  'Behind PgBouncer in transaction mode, session state (SET, SET ROLE, LISTEN, PREPARE, temporary tables, advisory locks) does not last beyond one transaction; the statement was not sent. Run it inside a transaction, with SET LOCAL or set_config(..., true)',
  500
)

/**
 * A transaction (the route's, or `transaction()`'s) could not commit: a statement in it failed
 * and the code went on, so PostgreSQL rolled it back. The reply cannot claim success.
 */
export const PgTransactionAbortedError: FastifyErrorConstructor<{ code: 'FST_PG_TRANSACTION_ABORTED', statusCode: 500 }, []> = createError(
  'FST_PG_TRANSACTION_ABORTED',
  'A statement in the transaction failed, so it was rolled back instead of committed',
  500
)

/**
 * A statement went through a `request.db` (or a transaction's `db`) that cannot run one now: a
 * `transaction()` opened through it is still open (its statements belong to the `db` passed to
 * the callback), or the transaction it belongs to has ended. It was not sent.
 */
export const PgTransactionScopeError: FastifyErrorConstructor<{ code: 'FST_PG_TRANSACTION_SCOPE', statusCode: 500 }, [string]> = createError(
  'FST_PG_TRANSACTION_SCOPE',
  '%s; the statement was not sent',
  500
)

/**
 * Transaction control that cannot be nested inside a transaction the plugin manages (a route
 * transaction or `transaction()`): a COMMIT or ROLLBACK of a transaction this code did not begin,
 * `PREPARE TRANSACTION`, `... AND CHAIN`, or control inside a multi-statement string. It was not sent.
 */
export const PgTransactionControlError: FastifyErrorConstructor<{ code: 'FST_PG_TRANSACTION_CONTROL', statusCode: 500 }, [string]> = createError(
  'FST_PG_TRANSACTION_CONTROL',
  '`%s` cannot run inside a transaction the plugin manages (the route\'s or transaction()\'s; it ends that one); the statement was not sent',
  500
)

/**
 * When the plugin came to end its transaction, PostgreSQL had none open: a statement it did not
 * send (a COMMIT or ROLLBACK inside a multi-statement string) ended it. What ran before that
 * statement may be committed; what ran after it ran outside any transaction.
 */
export const PgTransactionEndedEarlyError: FastifyErrorConstructor<{ code: 'FST_PG_TRANSACTION_ENDED_EARLY', statusCode: 500 }, []> = createError(
  'FST_PG_TRANSACTION_ENDED_EARLY',
  'The transaction was ended by a statement the plugin did not send (a COMMIT or ROLLBACK inside a multi-statement string?): work before it may have been committed, work after it ran outside any transaction',
  500
)

/**
 * The connection was lost after COMMIT was sent and before its answer arrived: the transaction
 * may or may not have committed. 500, not 502/503: clients and proxies retry those, and a retry
 * of a write that did commit applies it twice. Make such writes idempotent (see the README).
 */
export const PgCommitUnknownError: FastifyErrorConstructor<{ code: 'FST_PG_COMMIT_UNKNOWN', statusCode: 500 }, [({ cause: unknown } | undefined)?]> = createError(
  'FST_PG_COMMIT_UNKNOWN',
  'The database connection was lost after COMMIT was sent: the transaction may or may not have committed',
  500
)

/**
 * The connection was lost (the server ended the session, the network failed). Status 503 with
 * `Retry-After` when the statement was never sent (nothing ran); 500 when it was sent (it may
 * have run). The original error is the `cause`.
 */
export const PgConnectionLostError: FastifyErrorConstructor<{ code: 'FST_PG_CONNECTION_LOST', statusCode: 500 | 503 }, [string, ({ cause: unknown } | undefined)?]> = createError(
  'FST_PG_CONNECTION_LOST',
  'The database connection was lost %s',
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

/** SQLSTATEs the server sends as it ends a session (at FATAL severity). */
const SESSION_ENDED_CODES = new Set([
  '57P01', // admin_shutdown: pg_terminate_backend, fast shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now: starting up / shutting down
  '57P05', // idle_session_timeout
  '25P03' // idle_in_transaction_session_timeout
])

const SOCKET_ERROR_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH'])

const LOST_CODES = new Set(['FST_PG_CONNECTION_LOST', 'FST_PG_COMMIT_UNKNOWN'])

/**
 * True when the error means the connection itself can no longer be trusted: the session is
 * gone or in an unknown state. Such a client is destroyed, never pooled again.
 *
 * What the server reports carries a severity, and the severity decides: FATAL and PANIC end the
 * session; an ERROR leaves it usable whatever its class (a wrong parameter count is an ERROR of
 * class 08, protocol_violation). A severity in another language falls back to the SQLSTATE.
 * Errors without one come from the socket or from pg itself.
 */
/**
 * The server ended the session because it sat idle (`idle_session_timeout`, SQLSTATE 57P05): a
 * statement that met this answer had not reached it, and never ran. (A statement that arrives
 * first stops the timer; the timeout fires only while nothing runs and no transaction is open.)
 */
export function neverRan (error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === '57P05'
}

export function isConnectionError (error: unknown): boolean {
  if (error === null || typeof error !== 'object') return false
  const { code, severity, message } = error as { code?: unknown, severity?: unknown, message?: unknown }
  if (severity === 'FATAL' || severity === 'PANIC') return true
  if (severity === 'ERROR') return false
  if (typeof code === 'string' && (code.startsWith('08') || SESSION_ENDED_CODES.has(code) || SOCKET_ERROR_CODES.has(code) || LOST_CODES.has(code))) return true
  return typeof message === 'string' && saysLost(message)
}

/**
 * The coded error a caller gets for a connection-class `error` of a statement: whether it ran is
 * known only when pg refused it before writing it (then 503: nothing ran, trying again is safe).
 * A COMMIT that was sent may have committed.
 */
export function lostConnectionError (error: Error, commit: boolean): Error {
  if (error instanceof PgConnectionLostError) return error
  if (refusedUnsent(error.message)) return notSentError(error)
  if (commit) return new PgCommitUnknownError({ cause: error })
  return new PgConnectionLostError('while the statement ran; it may or may not have taken effect', { cause: error })
}

/**
 * pg gave up waiting for the statement's answer (its `query_timeout`: the statement timeout plus
 * `cancelGraceMs`, or the user's own): the socket may be blackholed, the statement may have run.
 */
export function noAnswerError (cause: Error): Error {
  return new PgConnectionLostError('with no answer to the statement in time (a timeout on the client); it may or may not have taken effect', { cause })
}

/** The connection was already known lost: the statement was not sent (nothing ran; 503). */
export function notSentError (cause: unknown): Error {
  const lost = new PgConnectionLostError('before the statement was sent; it did not run', { cause })
  lost.statusCode = 503
  return withRetryAfter(lost, 1)
}

/**
 * A rejected promise for a statement the plugin refused, already marked as handled: a statement a
 * handler fired and forgot must not crash the process because the plugin refused it (the caller
 * that awaits it still gets the error). Whoever refuses logs it.
 */
export function refused (error: unknown): Promise<never> {
  const promise = Promise.reject(error)
  promise.catch(() => {})
  return promise
}
