/** Error classification and the exported error constructors. */
import t from 'tap'
import {
  PgAcquireTimeoutError,
  PgPoolClosedError,
  PgUnavailableError,
  isConnectionError
} from '../src/index.js'

t.test('isConnectionError: the connection is gone or in an unknown state', async (t) => {
  const yes = [
    { code: '08006' }, // connection_failure
    { code: '08P01' }, // protocol_violation
    { code: '57P01' }, // admin_shutdown (pg_terminate_backend)
    { code: '57P02' },
    { code: '57P03' },
    { code: 'ECONNRESET' },
    { code: 'EPIPE' },
    new Error('Connection terminated unexpectedly'),
    new Error('Connection terminated'),
    new Error('Client has encountered a connection error and is not queryable'),
    { code: '57P05' }, // idle_session_timeout
    { code: '25P03' }, // idle_in_transaction_session_timeout
    { code: '57P01', severity: 'FATAL' },
    { code: 'XX000', severity: 'PANIC' },
    { code: 'FST_PG_CONNECTION_LOST' }, // the plugin's own, coded
    { code: 'FST_PG_COMMIT_UNKNOWN' }
  ]
  const no = [
    { code: '23505' }, // unique_violation
    { code: '57014' }, // query_canceled (statement_timeout): the session is fine
    { code: '40001' }, // serialization_failure
    { code: '08P01', severity: 'ERROR' }, // a wrong parameter count: the server says the session is fine
    new Error('Query read timeout'), // pg's query_timeout: that client is destroyed, the server is fine
    new Error('relation "x" does not exist'),
    { code: 42 },
    { message: 42 },
    null,
    undefined,
    'Connection terminated'
  ]
  for (const error of yes) t.ok(isConnectionError(error), JSON.stringify(error) ?? String(error))
  for (const error of no) t.notOk(isConnectionError(error), JSON.stringify(error) ?? String(error))
})

t.test('the 503 errors are coded, instanceof-checkable, and in Fastify\'s shape', async (t) => {
  const timeout = new PgAcquireTimeoutError(2000)
  t.ok(timeout instanceof PgAcquireTimeoutError)
  t.ok(timeout instanceof Error)
  t.match(timeout, { code: 'FST_PG_ACQUIRE_TIMEOUT', statusCode: 503, message: /2000 ms/ })
  const cause = new Error('connect ECONNREFUSED 127.0.0.1:1')
  const unavailable = new PgUnavailableError(cause.message, { cause })
  t.equal(unavailable.cause, cause)
  t.match(unavailable, { code: 'FST_PG_UNAVAILABLE', statusCode: 503, message: /ECONNREFUSED/ })
  t.match(new PgPoolClosedError(), { code: 'FST_PG_POOL_CLOSED', statusCode: 503 })
})
