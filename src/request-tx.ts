import type { PoolClient, QueryResult } from 'pg'
import type { RequestDb } from './db.js'
import { PgRequestEndedError, PgTransactionEndedEarlyError, PgTransactionScopeError } from './errors.js'
import { noop } from './deadline.js'
import type { PgQueryConfig } from './options.js'
import type { RequestPool } from './request-pool.js'
import { checkTransactionOptions, Frames, type Frame, type Step, type TransactionOptions } from './transaction.js'

/** What the plugin sends for its own transaction control, decided when it is sent (from the status it meets). */
export type Plan = (status: string | null) => Step

/** The request handle, as its transactions use it. */
export interface Runner extends RequestDb {
  /** The request has ended: no statement is accepted. */
  readonly ended: boolean
  /** Queues a statement (the plugin's own control when `plan` is given). */
  run (text: string | PgQueryConfig, values: unknown[] | undefined, plan: Plan | undefined): Promise<QueryResult<any>>
  /** Queues the route's BEGIN ahead of every statement; if it fails, nothing queued behind it runs. */
  runFirst (plan: Plan): Promise<unknown>
  /** A refused statement: logged, and rejected (already marked handled). */
  refuse (error: Error): Promise<never>
  runIn (scope: RequestDb, text: string | PgQueryConfig, values?: unknown[], callback?: unknown): Promise<QueryResult<any>>
  transactionIn<T> (scope: RequestDb, fn: (db: RequestDb) => Promise<T>, options?: TransactionOptions): Promise<T>
  connectionIn (scope: RequestDb): Promise<PoolClient>
  /** A pg.Pool view of `scope`, for libraries that take a pool. */
  poolOf (scope: RequestDb): RequestPool
}

/** The `db` a `transaction()` callback gets: the request's connection, inside that transaction. */
class TransactionDb implements RequestDb {
  readonly #runner: Runner
  /** Its transaction has ended (or one around it has). */
  over = false
  #pool: RequestPool | undefined

  constructor (runner: Runner) {
    this.#runner = runner
  }

  query (text: string | PgQueryConfig, values?: unknown[], ...rest: unknown[]): Promise<QueryResult<any>> {
    return this.#runner.runIn(this, text, values, rest[0])
  }

  transaction<T> (fn: (db: RequestDb) => Promise<T>, options?: TransactionOptions): Promise<T> {
    return this.#runner.transactionIn(this, fn, options)
  }

  connection (): Promise<PoolClient> {
    return this.#runner.connectionIn(this)
  }

  get pool (): RequestPool {
    return (this.#pool ??= this.#runner.poolOf(this))
  }
}

/**
 * The route's transaction (`config.pgPool.transaction`): none on this route; pending (begins
 * with the request's first statement); open (its BEGIN is queued or sent); ended (the reply is
 * on its way: no more statements, they would run outside it).
 */
type RouteTx = 'none' | 'pending' | 'open' | 'ended'

/**
 * A request's transactions: the route's, the `transaction()` calls running (each with its own
 * `db`, only the innermost may send statements), and the levels open on the connection (`frames`,
 * which also translate the user's own transaction control; see transaction.ts).
 */
export class Transactions {
  readonly frames = new Frames()
  readonly #runner: Runner
  /** `transaction()` calls still running, innermost last. */
  readonly #open: TransactionDb[] = []
  #route: RouteTx
  /** How the route's transaction begins. */
  readonly #beginWith: TransactionOptions | undefined
  /** The route's BEGIN, once it is queued; its frame once it ran. */
  #began: Promise<unknown> | undefined
  #routeFrame: Frame | undefined

  constructor (runner: Runner, beginWith: TransactionOptions | undefined) {
    this.#runner = runner
    this.#beginWith = beginWith
    this.#route = beginWith === undefined ? 'none' : 'pending'
  }

  /** None of the plugin's transactions is open or to come: a lost statement may be retried. */
  get none (): boolean { return this.#route === 'none' && this.frames.size === 0 }

  /** The route's BEGIN, when it is queued (statements on a `connection()` client wait for it). */
  get began (): Promise<unknown> | undefined { return this.#began }

  /** Why `scope` cannot send a statement now, if it cannot. */
  refusal (scope: RequestDb): Error | undefined {
    // After the route's transaction ended, a statement would run outside it: refused like after the end.
    if (this.#runner.ended || this.#route === 'ended') return new PgRequestEndedError()
    const innermost = this.#open[this.#open.length - 1]
    if (scope === (innermost ?? this.#runner)) return undefined
    if (scope !== this.#runner && (scope as TransactionDb).over) return new PgTransactionScopeError('This transaction has ended')
    return new PgTransactionScopeError('A transaction() opened through this db is still open: its statements go through the db passed to its callback')
  }

  /** The connection arrived: the route's transaction begins, ahead of the first statement. */
  checkedOut (): void {
    if (this.#route !== 'pending') return
    this.#route = 'open'
    const options = this.#beginWith as TransactionOptions
    this.#began = this.#runner.runFirst((status) => this.frames.open(options, status, (frame) => { this.#routeFrame = frame }))
    this.#began.catch(noop)
  }

  /** `transaction(fn)` through `scope`. */
  run<T> (scope: RequestDb, fn: (db: RequestDb) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
    // (Returned as it is: a refusal's promise is marked handled, an async function's would not be.)
    const refusal = this.refusal(scope)
    if (refusal !== undefined) return this.#runner.refuse(refusal)
    return this.#run(fn, options)
  }

  async #run<T> (fn: (db: RequestDb) => Promise<T>, options: TransactionOptions): Promise<T> {
    checkTransactionOptions(options)
    const db = new TransactionDb(this.#runner)
    // From now on, statements through `scope` would join this transaction: they are refused.
    this.#open.push(db)
    let frame: Frame | undefined
    const opened = this.#runner.run('begin', undefined, (status) => this.frames.open(options, status, (f) => { frame = f }))
    let result: T
    try {
      await opened
      result = await fn(db)
    } catch (error) {
      // A rollback that cannot run (the connection died) changes nothing: the plugin rolls back
      // or destroys the connection when the request ends anyway. One the transaction around it
      // ended first is rolled back already.
      const ending = frame === undefined || db.over ? undefined : await this.#end(frame, false).then(noop, (e: unknown) => e)
      this.#close(db)
      // Except the one thing a rollback can tell: there was nothing left to roll back.
      if (ending instanceof PgTransactionEndedEarlyError) throw Object.assign(ending, { cause: error })
      throw error
    }
    if (db.over) throw new PgTransactionScopeError('The transaction around this one ended before its callback finished, and rolled it back')
    this.#close(db)
    await this.#end(frame as Frame, true)
    return result
  }

  /**
   * The route's transaction ends (its onSend hook): COMMIT when `commit`, else ROLLBACK. A
   * transaction PostgreSQL already aborted (a statement failed and the handler went on) cannot
   * commit: that throws FST_PG_TRANSACTION_ABORTED, so the reply does not claim success.
   */
  async endRoute (commit: boolean): Promise<void> {
    if (this.#route !== 'open' || this.#runner.ended) {
      if (this.#route === 'pending') this.#route = 'ended'
      return
    }
    // Statements already queued run first, inside the transaction; later ones are refused.
    this.#route = 'ended'
    // transaction() calls still running did not finish: their levels are rolled back.
    if (this.#open.length > 0) this.#close(this.#open[0] as TransactionDb)
    try {
      await this.#began
    } catch (error) {
      // A BEGIN that failed: the reply cannot claim a commit (nothing else to end).
      if (commit) throw error
      return
    }
    const ending = this.#end(this.#routeFrame as Frame, commit)
    // A rollback that cannot run changes nothing: the end of the request rolls back or destroys.
    if (commit) await ending
    else await ending.catch((error: unknown) => { if (error instanceof PgTransactionEndedEarlyError) throw error })
  }

  /** A transaction's `db` stops (and so do those opened inside it that are still running). */
  #close (db: TransactionDb): void {
    const at = this.#open.indexOf(db)
    for (const inner of this.#open.splice(at)) inner.over = true
  }

  #end (frame: Frame, commit: boolean): Promise<unknown> {
    return this.#runner.run(commit ? 'commit' : 'rollback', undefined, (status) => this.frames.close(frame, commit, status))
  }
}
