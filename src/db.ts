import type { PoolClient, QueryResult, QueryResultRow } from 'pg'
import type { PgQueryConfig } from './options.js'
import type { PgPoolLike } from './pool-contract.js'
import type { TransactionOptions } from './transaction.js'

/** `request.db`: the request's lazily checked-out connection. */
export interface RequestDb {
  /**
   * Runs one statement on the request's connection, checking it out on first use. Statements
   * of one request run one after another, in call order.
   */
  query<R extends QueryResultRow = any>(text: string, values?: unknown[]): Promise<QueryResult<R>>
  query<R extends QueryResultRow = any>(config: PgQueryConfig): Promise<QueryResult<R>>
  /**
   * The checked-out client itself, for cursors, streams and COPY. The plugin still returns it
   * when the request ends: `release()` on it returns nothing early (`release(err)` marks it
   * to be destroyed), and using it after the request ended fails with `FST_PG_REQUEST_ENDED`.
   */
  connection (): Promise<PoolClient>
  /**
   * Runs `fn` in a transaction: BEGIN, then COMMIT when it resolves, ROLLBACK when it throws
   * (and the error is rethrown); its value is returned. `fn` gets the transaction's own `db`:
   * while it runs, statements go through that one (the outer `db` refuses them with
   * `FST_PG_TRANSACTION_SCOPE`, so nothing joins the transaction by accident). Nested calls use
   * savepoints. A transaction PostgreSQL aborted (a statement failed and `fn` caught it) rejects
   * with `FST_PG_TRANSACTION_ABORTED` instead of resolving.
   */
  transaction<T>(fn: (db: RequestDb) => Promise<T>, options?: TransactionOptions): Promise<T>
  /**
   * This db as a pg.Pool of one, for libraries that take a pool: `drizzle(request.db.pool)`,
   * Kysely's `new PostgresDialect({ pool: request.db.pool })`, `new PrismaPg(request.db.pool)`.
   * Its statements are this db's (same queue, timeout, transactions, fence after the end); its
   * `connect()` is `connection()`; `release()` and `end()` give nothing back early.
   */
  readonly pool: PgPoolLike
}

/**
 * The names of your further databases, declared once so that `fastify.pg.<name>`,
 * `request.dbs.<name>` and a route's `db` autocomplete, and an unknown name is a compile error:
 * ```ts
 * declare module 'fastify-pg-pool' {
 *   interface PgDatabases { replica: true }
 * }
 * ```
 */
export interface PgDatabases {}

/** A name declared in `PgDatabases` (those the plugin refuses at register are left out). */
export type PgDatabaseName = Exclude<keyof PgDatabases & string, ReservedName>
type ReservedName = 'default' | 'pool' | 'query' | 'connect' | 'transaction' | 'stats' | 'healthCheck' | 'pressureHandler' | 'then' | 'toJSON' | keyof Object

/**
 * `request.dbs`: every database this request's route can reach, by name (`default` is the one
 * registered without a name). Each is a `request.db` of its own: checked out on first use,
 * always returned. The route's own database is `request.db` itself.
 */
export type PgRequestDbs = { readonly default: RequestDb } & { readonly [N in PgDatabaseName]: RequestDb }
