import type { PoolClient, PoolOptions, QueryResult } from 'pg'
import type { RequestDb } from './db.js'
import { PgAcquireTimeoutError, PgDoubleReleaseError, PgReleasedError, PgRequestEndedError, refused, withRetryAfter } from './errors.js'
import type { PgQueryConfig } from './options.js'
import { callStyle, PoolContract } from './pool-contract.js'

interface Waiter { resolve: () => void, reject: (error: Error) => void }

/**
 * `request.db.pool`: the request's connection as a pg.Pool of one, for libraries that take a pool
 * (Kysely's PostgresDialect, drizzle, Prisma's adapter). Its statements are `db`'s: checked out on
 * first use, fenced after the end, the route's timeout and transaction (a library's own
 * transactions nest as savepoints), the session reset.
 *
 * As with a real pool of one, the client has one holder at a time: `connect()` waits until the
 * holder before it calls `release()`, and `query()` waits for a turn too. So two transactions a
 * library runs at once take turns instead of interleaving on the one connection (where one's
 * ROLLBACK would undo the other's work). `release()` ends a turn; the connection itself goes back
 * when the request ends, and `end()` ends nothing. Turns still awaited when the request ends
 * are refused (`FST_PG_REQUEST_ENDED`), and no turn is waited for longer than a checkout.
 */
export class RequestPool extends PoolContract {
  readonly #db: RequestDb
  readonly options: PoolOptions
  /** Somebody holds the client (a `connect()` not yet released, or a `query()` running). */
  #held = false
  readonly #waiting: Waiter[] = []
  /** How long a turn may be waited for (`acquireTimeoutMs`). */
  readonly #waitMs: number
  #over = false

  constructor (db: RequestDb, options: PoolOptions, waitMs: number) {
    super()
    this.#db = db
    this.options = options
    this.#waitMs = waitMs
  }

  // One connection, never idle in this pool.
  get totalCount (): number { return 1 }
  get idleCount (): number { return 0 }
  get waitingCount (): number { return this.#waiting.length }
  get expiredCount (): number { return 0 }

  protected async checkout (): Promise<PoolClient> {
    await this.#turn()
    let client: PoolClient
    try {
      client = await this.#db.connection()
    } catch (error) {
      this.#next()
      throw error
    }
    return this.#lease(client)
  }

  protected run (textOrConfig: string | PgQueryConfig, values: unknown[] | undefined): Promise<QueryResult<any>> {
    const start = (): Promise<QueryResult<any>> => {
      const ran = this.#db.query(textOrConfig as string, values)
      ran.then(() => this.#next(), () => this.#next())
      return ran
    }
    // (A free turn starts at once: in call order with db.query() calls made after it.)
    const turn = this.#turn()
    return turn === undefined ? start() : turn.then(start)
  }

  protected async shutdown (): Promise<void> {}

  /** @internal The request ended: no turn is given any more. */
  abandon (): void {
    this.#over = true
    for (const waiter of this.#waiting.splice(0)) waiter.reject(new PgRequestEndedError())
  }

  /**
   * The caller's turn to hold the client: now (undefined), or when the promise resolves. A wait
   * is bounded as any checkout is (`acquireTimeoutMs`: a library that never releases, or one that
   * waits for itself, gets a coded 503 instead of hanging its request).
   */
  #turn (): Promise<void> | undefined {
    if (this.#over) return refused(new PgRequestEndedError())
    if (!this.#held) {
      this.#held = true
      return undefined
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve: () => { clearTimeout(timer); resolve() },
        reject: (error) => { clearTimeout(timer); reject(error) }
      }
      const timer = setTimeout(() => {
        this.#waiting.splice(this.#waiting.indexOf(waiter), 1)
        reject(withRetryAfter(new PgAcquireTimeoutError(this.#waitMs), 1))
      }, this.#waitMs)
      this.#waiting.push(waiter)
    })
  }

  /** The turn ended: the next waiter's begins. */
  #next (): void {
    const waiter = this.#waiting.shift()
    if (waiter === undefined) this.#held = false
    else waiter.resolve()
  }

  /**
   * The request's client for one turn. Its statements are `db`'s (the request's queue, in call
   * order with `db.query()`, with the route's timeout, coded errors); a cursor or stream goes to
   * the client itself. `release()` ends the turn (once: twice throws FST_PG_DOUBLE_RELEASE;
   * `release(err)` has the connection destroyed when the request ends), and after it the turn's
   * statements are refused (FST_PG_RELEASED).
   */
  #lease (client: PoolClient): PoolClient {
    let released = false
    const query = (...args: unknown[]): unknown => {
      const submittable = typeof (args[0] as { submit?: unknown } | null)?.submit === 'function'
      if (!released) {
        if (submittable) return (client.query as (...a: unknown[]) => unknown)(...args)
        return callStyle(args, (statement, values) => this.#db.query(statement as string, values))
      }
      const error = new PgReleasedError()
      const last = args[args.length - 1]
      if (typeof last === 'function') return process.nextTick(last as (e: Error) => void, error)
      if (submittable) throw error
      return refused(error)
    }
    const release = (error?: Error | boolean): void => {
      if (released) throw new PgDoubleReleaseError()
      released = true
      if (error) client.release(error)
      this.#next()
    }
    // Everything else is the request's client (its listeners, escapes, type parsers).
    return Object.create(client, { query: { value: query }, release: { value: release } })
  }
}
