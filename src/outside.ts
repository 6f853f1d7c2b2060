import { EventEmitter } from 'node:events'
import type { FastifyBaseLogger } from 'fastify'
import type { RequestDb } from './db.js'
import type { Pool } from './pool.js'
import { RequestHandle } from './request-db.js'
import { routeSettings } from './route.js'
import type { TransactionOptions } from './transaction.js'

/**
 * `fastify.pg.transaction(fn)`: a transaction outside any request (a job, a script, a queue
 * consumer), run as a request of its own that ends when `fn` settles. So it has a request's
 * guarantees: COMMIT or ROLLBACK, nested `transaction()` calls and an ORM's own transactions on
 * `db.pool` as savepoints, statements after the end refused, a statement still running at the
 * end cancelled, the connection always returned.
 */
export async function transactionOutside<T> (
  pool: Pool,
  log: FastifyBaseLogger,
  fn: (db: RequestDb) => Promise<T>,
  options?: TransactionOptions,
  name?: string
): Promise<T> {
  const closed = new EventEmitter()
  // Ends as a reply that completed: statements it fired and forgot still run, then it goes back.
  const end = { writableEnded: true, once: (event: 'close', listener: () => void) => closed.once(event, listener) }
  const method = name === undefined ? 'fastify.pg.transaction' : `fastify.pg.${name}.transaction`
  const handle = new RequestHandle(pool, { method, routeOptions: { url: undefined }, log }, end, routeSettings(undefined), { label: name })
  try {
    return await handle.transaction(fn, options)
  } finally {
    closed.emit('close')
  }
}
