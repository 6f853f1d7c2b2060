import type { PoolClient, PoolOptions, QueryResult } from 'pg'
import type { RequestDb } from './db.js'
import type { PgQueryConfig } from './options.js'
import { PoolContract } from './pool-contract.js'

/**
 * `request.db.pool`: the request's connection as a pg.Pool of one, for libraries that take a pool
 * (Kysely's PostgresDialect, drizzle, Prisma's adapter). Its `query()` is `db.query()`; its
 * `connect()` is `db.connection()`, whose statements join the same queue; `release()` returns
 * nothing early and `end()` ends nothing: the connection goes back when the request ends. So the
 * library keeps every guarantee of `request.db`: checked out on first use, fenced after the end,
 * the route's timeout and transaction (its own transactions nest as savepoints), the session reset.
 */
export class RequestPool extends PoolContract {
  readonly #db: RequestDb
  readonly options: PoolOptions

  constructor (db: RequestDb, options: PoolOptions) {
    super()
    this.#db = db
    this.options = options
  }

  // One connection, never idle in this pool, nobody waiting for it here.
  get totalCount (): number { return 1 }
  get idleCount (): number { return 0 }
  get waitingCount (): number { return 0 }
  get expiredCount (): number { return 0 }

  protected checkout (): Promise<PoolClient> {
    return this.#db.connection()
  }

  protected run (textOrConfig: string | PgQueryConfig, values: unknown[] | undefined): Promise<QueryResult<any>> {
    return this.#db.query(textOrConfig as string, values)
  }

  protected async shutdown (): Promise<void> {}
}
