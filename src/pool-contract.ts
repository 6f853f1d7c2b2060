import type { EventEmitter } from 'node:events'
import type { FastifyBaseLogger } from 'fastify'
import pg, {
  type Pool as PgPoolClass,
  type PoolClient,
  type PoolOptions,
  type QueryArrayConfig,
  type QueryArrayResult,
  type QueryConfig,
  type QueryConfigValues,
  type QueryResult,
  type QueryResultRow,
  type Submittable
} from 'pg'
import { PgCallbackError, PgSubmittableError } from './errors.js'
import type { PgQueryConfig } from './options.js'

/** pg.Pool's `query()` overloads, with the plugin's `retry` accepted in a config. */
export interface PoolQuery {
  /** pg.Pool's signature, kept for type compatibility: a stream or cursor is refused (`FST_PG_SUBMITTABLE`); use `connect()`. */
  query<T extends Submittable>(queryStream: T): T
  query<R extends any[] = any[], I = any[]>(config: QueryArrayConfig<I> & { retry?: boolean }, values?: QueryConfigValues<I>): Promise<QueryArrayResult<R>>
  query<R extends QueryResultRow = any, I = any[]>(config: PgQueryConfig<I>): Promise<QueryResult<R>>
  query<R extends QueryResultRow = any, I = any[]>(textOrConfig: string | PgQueryConfig<I>, values?: QueryConfigValues<I>): Promise<QueryResult<R>>
  query<R extends any[] = any[], I = any[]>(config: QueryArrayConfig<I>, callback: (err: Error, result: QueryArrayResult<R>) => void): void
  query<R extends QueryResultRow = any, I = any[]>(textOrConfig: string | QueryConfig<I>, callback: (err: Error, result: QueryResult<R>) => void): void
  query<R extends QueryResultRow = any, I = any[]>(text: string, values: QueryConfigValues<I>, callback: (err: Error, result: QueryResult<R>) => void): void
}

/** A pg.Pool, as the libraries that take one see it (`request.db.pool`, and `fastify.pg.pool` beyond it). */
export interface PgPoolLike extends Omit<PgPoolClass, 'query'>, PoolQuery {}

const CALLBACK_LAST = 'query() takes the callback last: (text, values, callback) or (config, callback)'

type ConnectCallback = (err: Error | undefined, client: PoolClient | undefined, done: (release?: any) => void) => void
type QueryCallback = (err: Error | undefined, result?: QueryResult<any>) => void

/**
 * pg.Pool's calling conventions over a pool's own three promise methods (`checkout`, `run`,
 * `shutdown`): callbacks beside promises, the argument shapes of `query()`, `end()` once for good.
 *
 * Subclasses are pg.Pools to the type checker and to `instanceof` (Prisma's adapter takes any
 * other object for a config and opens a pool of its own): pg-pool's constructor runs, and
 * leaves nothing but empty lists; every public member is overridden here or in the subclass.
 *
 * Callbacks are called from their own tick, as pg-pool calls them: a callback that throws is an
 * uncaught exception, not a rejected promise nobody awaits.
 */
export abstract class PoolContract extends pg.Pool implements PgPoolLike {
  abstract override readonly totalCount: number
  abstract override readonly idleCount: number
  abstract override readonly waitingCount: number
  abstract override readonly expiredCount: number
  abstract override readonly options: PoolOptions
  /** `end()` was called. */
  override ending = false
  /** `end()` has finished. */
  override ended = false
  #end: Promise<void> | undefined

  /** A client of its own, returned with `release()`. */
  protected abstract checkout (): Promise<PoolClient>
  /** One statement (never a submittable, never with a callback). */
  protected abstract run (textOrConfig: string | PgQueryConfig, values: unknown[] | undefined): Promise<QueryResult<any>>
  /** What `end()` does, once. */
  protected abstract shutdown (): Promise<void>

  override connect (): Promise<PoolClient>
  override connect (callback: ConnectCallback): void
  override connect (callback?: ConnectCallback): Promise<PoolClient> | undefined {
    if (callback === undefined) return this.checkout()
    if (typeof callback !== 'function') throw new PgCallbackError('connect() takes a callback function or nothing')
    this.checkout().then(
      (client) => process.nextTick(callback, undefined, client, (release?: unknown) => client.release(release as Error | boolean | undefined)),
      (error: Error) => process.nextTick(callback, error, undefined, () => {})
    )
  }

  override query (...args: unknown[]): any {
    const [first] = args
    if (typeof (first as Partial<Submittable> | null)?.submit === 'function') throw new PgSubmittableError()
    // A function in the statement's place is called back with the error, as pg-pool does.
    if (typeof first === 'function') {
      process.nextTick(first as QueryCallback, new PgCallbackError(CALLBACK_LAST))
      return
    }
    return callStyle(args, (statement, values) => this.run(statement, values))
  }

  override end (): Promise<void>
  override end (callback: () => void): void
  override end (callback?: (error?: Error) => void): Promise<void> | undefined {
    if (this.#end === undefined) {
      this.ending = true
      this.#end = this.shutdown().then(() => { this.ended = true })
    }
    if (callback === undefined) return this.#end
    this.#end.then(() => process.nextTick(callback), (error: Error) => process.nextTick(callback, error))
  }
}

/**
 * pg's shapes of a statement's call, `(text, values?, callback?)` or `(config, callback?)`, run
 * through `run`: its promise, or nothing when a callback takes the outcome (called from its own
 * tick, as pg-pool calls it).
 */
export function callStyle (args: unknown[], run: (statement: string | PgQueryConfig, values: unknown[] | undefined) => Promise<QueryResult<any>>): Promise<QueryResult<any>> | undefined {
  const [first, second, third] = args
  const callback = typeof second === 'function' ? second : third
  const values = typeof second === 'function' ? undefined : second
  if (callback !== undefined && typeof callback !== 'function') {
    throw new PgCallbackError(CALLBACK_LAST)
  }
  const result = run(first as string | PgQueryConfig, values as unknown[] | undefined)
  if (callback === undefined) return result
  result.then(
    (res) => process.nextTick(callback as QueryCallback, undefined, res),
    (error: Error) => process.nextTick(callback as QueryCallback, error)
  )
}

/**
 * Emits one of pg-pool's events, if anybody listens (an 'error' nobody listens to must not throw).
 * A listener that throws is logged: it must not leave a connection half returned, nor crash the
 * process from inside the pool (with pg-pool it would throw from the caller's own `release()`).
 */
export function tell (pool: EventEmitter, log: FastifyBaseLogger, event: 'connect' | 'acquire' | 'remove' | 'error' | 'release', ...args: unknown[]): void {
  if (pool.listenerCount(event) === 0) return
  try {
    pool.emit(event, ...args)
  } catch (error) {
    log.error({ err: error }, `fastify-pg-pool: a listener of fastify.pg.pool's '${event}' event threw; the pool went on`)
  }
}
