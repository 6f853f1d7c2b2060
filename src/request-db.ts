import type { FastifyBaseLogger } from 'fastify'
import type { PoolClient, QueryResult, QueryResultRow } from 'pg'
import { PgInvalidOptionError, PgRequestEndedError, PgTransactionAbortedError, isConnectionError } from './errors.js'
import { guardClient, type GuardedClient } from './guard.js'
import type { Conn, Holder } from './conn.js'
import type { PgQueryConfig } from './options.js'
import type { PgPool } from './pool.js'
import type { CheckoutSignal } from './queue.js'
import type { RouteSettings } from './route.js'
import { noop } from './deadline.js'
import { isTransactionControl, sendStatement } from './timeout.js'

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
   * (and the error is rethrown); its value is returned. Nested calls use savepoints, so an inner
   * failure rolls back only the inner part when the outer `fn` catches it.
   */
  transaction<T>(fn: (db: RequestDb) => Promise<T>, options?: TransactionOptions): Promise<T>
}

/** How a top-level `transaction()` begins. Nested transactions (savepoints) take none. */
export interface TransactionOptions {
  isolationLevel?: 'serializable' | 'repeatable read' | 'read committed' | 'read uncommitted'
  readOnly?: boolean
  deferrable?: boolean
}

const ISOLATION_LEVELS = new Set(['serializable', 'repeatable read', 'read committed', 'read uncommitted'])

/** Throws a coded error for options `begin()` cannot turn into SQL. */
export function checkTransactionOptions ({ isolationLevel, readOnly, deferrable }: TransactionOptions): void {
  if (isolationLevel !== undefined && !ISOLATION_LEVELS.has(isolationLevel)) {
    throw new PgInvalidOptionError('isolationLevel', `one of ${[...ISOLATION_LEVELS].join(', ')}`, `\`${String(isolationLevel)}\``)
  }
  for (const [name, value] of [['readOnly', readOnly], ['deferrable', deferrable]] as const) {
    if (value !== undefined && typeof value !== 'boolean') throw new PgInvalidOptionError(name, 'true or false', `\`${String(value)}\``)
  }
}

function begin (options: TransactionOptions): string {
  checkTransactionOptions(options)
  const { isolationLevel, readOnly, deferrable } = options
  let sql = 'begin'
  if (isolationLevel !== undefined) sql += ` isolation level ${isolationLevel}`
  if (readOnly !== undefined) sql += readOnly ? ' read only' : ' read write'
  if (deferrable !== undefined) sql += deferrable ? ' deferrable' : ' not deferrable'
  return sql
}

/**
 * unused → acquiring → held → released; acquiring → unused when the checkout fails; held →
 * acquiring when a `retry` statement lost its connection. `released` is final: it is entered
 * when the response closes, on every path.
 */
type State = 'unused' | 'acquiring' | 'held' | 'released'

/**
 * The route's transaction (`config.pgPool.transaction`): none on this route; pending (begins
 * with the request's first statement); open (its BEGIN is queued or sent); ended (the reply is
 * on its way: no more statements, they would run outside it).
 */
type RouteTx = 'none' | 'pending' | 'open' | 'ended'

interface Job {
  text: string | PgQueryConfig
  values: unknown[] | undefined
  /** `retry` was asked for and not used yet. */
  retry: boolean
  resolve (result: QueryResult<any>): void
  reject (error: unknown): void
}

/** The parts of a response (HTTP/1 `ServerResponse`, `Http2ServerResponse`, light-my-request) used here. */
interface Response {
  destroyed?: boolean
  stream?: { destroyed: boolean }
  once (event: 'close', fn: () => void): unknown
}

/**
 * Too late to listen for 'close'? HTTP/1 responses (and light-my-request's) set `destroyed`
 * just before emitting it; an HTTP/2 response has no `destroyed`, its stream does.
 */
function ended (response: Response): boolean {
  return response.destroyed === true || response.stream?.destroyed === true
}

/** Abandons a checkout when the request ends: an AbortSignal's few members, without its cost. */
class Abandon implements CheckoutSignal {
  aborted = false
  reason: unknown = undefined
  #listener: (() => void) | undefined

  addEventListener (_type: 'abort', listener: () => void): void { this.#listener = listener }
  removeEventListener (): void { this.#listener = undefined }

  abort (reason: unknown): void {
    this.aborted = true
    this.reason = reason
    this.#listener?.()
  }
}

export class RequestHandle implements RequestDb {
  readonly #pool: PgPool
  readonly #log: FastifyBaseLogger
  readonly #holder: Holder
  #state: State = 'unused'
  #conn: Conn | undefined
  #checkout: Promise<Conn> | undefined
  #abort: Abandon | undefined
  /** A statement of this request is on the wire. */
  #running = false
  /** Statements waiting for the checkout or for the one running. */
  readonly #queue: Job[] = []
  /** How many `transaction()` calls are open: 0 outside, then savepoint depth. */
  #depth = 0
  #guarded: GuardedClient | undefined
  #origin: Error | undefined
  /** The statement timeout sent with statements (see timeout.ts), when one must be. */
  readonly #timeoutMs: number | undefined
  /** The open transaction already carries the statement timeout. */
  #timed = false
  #routeTx: RouteTx
  /** How the route's transaction begins. */
  readonly #beginWith: TransactionOptions | undefined
  /** The route's BEGIN, once it is queued. */
  #began: Promise<unknown> | undefined

  constructor (pool: PgPool, request: Holder & { log: FastifyBaseLogger }, response: Response, settings: RouteSettings) {
    this.#pool = pool
    this.#log = request.log
    this.#holder = request
    this.#timeoutMs = pool.timeoutToSend(settings.statementTimeoutMs)
    this.#beginWith = settings.transaction
    this.#routeTx = settings.transaction === undefined ? 'none' : 'pending'
    // Inside the route's transaction, transaction() makes savepoints.
    if (this.#routeTx === 'pending') this.#depth = 1
    // 'close' fires on every way a response can end: sent, aborted, hijacked, timed out.
    if (ended(response)) this.#state = 'released'
    else response.once('close', () => this.#move('released'))
  }

  query (text: string | PgQueryConfig, values?: unknown[]): Promise<QueryResult<any>> {
    // After the route's transaction ended, a statement would run outside it: refused like after the end.
    if (this.#routeTx === 'ended') return Promise.reject(new PgRequestEndedError())
    return this.#run(text, values)
  }

  #run (text: string | PgQueryConfig, values?: unknown[]): Promise<QueryResult<any>> {
    return new Promise((resolve, reject) => {
      const job: Job = { text, values, retry: typeof text === 'object' && text?.retry === true, resolve, reject }
      if (this.#state === 'held' && !this.#running) this.#send(job)
      else if (this.#state === 'released') reject(new PgRequestEndedError())
      else {
        this.#queue.push(job)
        if (this.#state === 'unused') this.#move('acquiring')
      }
    })
  }

  async transaction<T> (fn: (db: RequestDb) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
    const depth = this.#depth
    if (depth > 0 && Object.keys(options).length > 0) {
      throw new PgInvalidOptionError('transaction options', 'none inside another transaction (it is a savepoint)', Object.keys(options).join(', '))
    }
    const savepoint = `fastify_pg_pool_${depth}`
    await this.query(depth === 0 ? begin(options) : `savepoint ${savepoint}`)
    this.#depth = depth + 1
    try {
      const result = await fn(this)
      await this.query(depth === 0 ? 'commit' : `release savepoint ${savepoint}`)
      this.#depth = depth
      return result
    } catch (error) {
      this.#depth = depth
      // A rollback that cannot run (the connection died) changes nothing: the plugin rolls
      // back or destroys the connection when the request ends anyway.
      await this.query(depth === 0 ? 'rollback' : `rollback to savepoint ${savepoint}`).catch(noop)
      throw error
    }
  }

  /**
   * @internal The route's transaction ends (its onSend hook): COMMIT when `commit`, else
   * ROLLBACK. A transaction PostgreSQL already aborted (a statement failed and the handler went
   * on) cannot commit: that throws FST_PG_TRANSACTION_ABORTED, so the reply does not claim success.
   */
  async endTransaction (commit: boolean): Promise<void> {
    if (this.#routeTx === 'none' || this.#routeTx === 'ended' || this.#state === 'released') return
    const begun = this.#routeTx === 'open'
    // Statements already queued run first, inside the transaction; later ones are refused.
    this.#routeTx = 'ended'
    this.#depth = 0
    if (!begun) return
    if (!commit) {
      // A rollback that cannot run changes nothing: the end of the request rolls back or destroys.
      await this.#run('rollback').catch(noop)
      return
    }
    // COMMIT of an aborted transaction answers ROLLBACK, without an error.
    const { command } = await this.#run('commit')
    if (command === 'ROLLBACK') throw new PgTransactionAbortedError()
  }

  async connection (): Promise<PoolClient> {
    if (this.#state === 'unused') this.#move('acquiring')
    if (this.#state === 'acquiring') await this.#checkout
    if (this.#state === 'held') await this.#began
    if (this.#state !== 'held' || this.#routeTx === 'ended') throw new PgRequestEndedError()
    const conn = this.#conn as Conn
    // release() cannot return it early: the plugin returns it when the request ends.
    // release(err) asks for it to be destroyed then, as with pg-pool.
    this.#guarded ??= guardClient(
      conn,
      () => this.#state === 'held' && this.#routeTx !== 'ended',
      (error) => { if (error && this.#state === 'held') conn.broken = true },
      () => new PgRequestEndedError(),
      (statement) => this.#pool.admit(conn, statement)
    )
    return this.#guarded.client
  }

  /** The one place where the state changes, with everything each change implies. */
  #move (next: State, conn?: Conn): void {
    const prev = this.#state
    this.#state = next
    switch (next) {
      case 'acquiring': {
        if (prev === 'held') {
          // A `retry` statement lost the connection: give it back (it is destroyed) and check
          // out another; the statement waits at the head of the queue.
          this.#guarded?.closeCursors()
          this.#guarded = undefined
          this.#pool.release(this.#conn as Conn)
          this.#conn = undefined
        }
        const abort = this.#abort = new Abandon()
        // The stack of the request's first use of request.db: the handler's line, for the leak warning.
        if (this.#pool.leakDetection) this.#origin ??= new Error('checked out here')
        this.#checkout = this.#pool.acquire({ signal: abort, log: this.#log, holder: this.#holder, origin: this.#origin })
        this.#checkout.then(
          // The pool checks the abort signal last thing before it resolves, and the request
          // can only end in a later event: the state is still 'acquiring' here.
          (got) => this.#move('held', got),
          (error: unknown) => {
            if (this.#state === 'acquiring') this.#move('unused')
            this.#fail(error)
          }
        )
        break
      }
      case 'held':
        this.#conn = conn
        // The route's transaction begins on the request's first statement, before it.
        if (this.#routeTx === 'pending') this.#beginRoute(this.#beginWith as TransactionOptions)
        this.#next()
        break
      case 'unused':
        this.#checkout = undefined
        break
      case 'released':
        // Most requests end with nothing queued: no error (and no stack) is built for them.
        if (this.#queue.length > 0) this.#fail(new PgRequestEndedError())
        if (prev === 'acquiring') (this.#abort as Abandon).abort(new PgRequestEndedError())
        else if (prev === 'held') {
          this.#guarded?.closeCursors()
          this.#pool.release(this.#conn as Conn)
        }
        this.#conn = undefined
        break
    }
  }

  #beginRoute (options: TransactionOptions): void {
    this.#routeTx = 'open'
    this.#began = new Promise((resolve, reject) => {
      this.#queue.unshift({
        text: begin(options),
        values: undefined,
        retry: false,
        resolve,
        reject: (error) => {
          reject(error)
          // Nothing queued behind a failed BEGIN may run outside the transaction.
          this.#fail(error)
        }
      })
    })
    this.#began.catch(noop)
  }

  #send (job: Job): void {
    const conn = this.#conn as Conn
    const tx = conn.client.getTransactionStatus()
    let statement: unknown
    try {
      statement = this.#pool.admit(conn, job.text)
    } catch (error) {
      job.reject(error)
      return this.#next()
    }
    let timeoutMs: number | undefined
    if (this.#timeoutMs !== undefined) {
      // Outside a transaction every statement carries the timeout; inside one, the first does.
      // After transaction control (a rollback to a savepoint undoes it) it is sent again.
      if (isTransactionControl(statement)) this.#timed = false
      else if (tx === 'I' || (tx === 'T' && !this.#timed)) {
        timeoutMs = this.#timeoutMs
        this.#timed = tx === 'T'
      }
    }
    this.#running = true
    // Never inside a transaction: the route's, or one the handler began.
    const retry = job.retry && tx === 'I' && this.#routeTx === 'none'
    let settled = false
    const done = (error: Error | null, result?: QueryResult<any>): void => {
      // pg calls back twice when a value fails to serialise: at once, and at ReadyForQuery.
      if (settled) return
      settled = true
      this.#running = false
      if (error) {
        conn.failed(error)
        if (retry && isConnectionError(error) && this.#state === 'held') {
          job.retry = false
          this.#queue.unshift(job)
          this.#move('acquiring')
          return
        }
        job.reject(error)
      } else {
        job.resolve(result as QueryResult<any>)
      }
      this.#next()
    }
    try {
      sendStatement(conn.client, statement, job.values, timeoutMs, done)
    } catch (error) {
      // pg throws at once on a malformed call (a null query, a bad callback)
      done(error as Error)
    }
  }

  #next (): void {
    const job = this.#queue.shift()
    if (job !== undefined) this.#send(job)
  }

  #fail (error: unknown): void {
    for (const job of this.#queue.splice(0)) job.reject(error)
  }
}
