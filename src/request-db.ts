import type { FastifyBaseLogger } from 'fastify'
import type { PoolClient, QueryResult, QueryResultRow } from 'pg'
import {
  PgCommitUnknownError,
  PgRequestEndedError,
  PgTransactionEndedEarlyError,
  PgTransactionScopeError,
  isConnectionError,
  lostConnectionError,
  notSentError,
  refused
} from './errors.js'
import { guardClient, type GuardedClient } from './guard.js'
import type { Conn, Holder } from './conn.js'
import type { PgQueryConfig } from './options.js'
import type { PgPool } from './pool.js'
import type { CheckoutSignal } from './queue.js'
import type { RouteSettings } from './route.js'
import { noop } from './deadline.js'
import { isTransactionControl, sendStatement } from './timeout.js'
import { checkTransactionOptions, commits, Frames, type Frame, type Step, type TransactionOptions } from './transaction.js'

export { checkTransactionOptions, type TransactionOptions } from './transaction.js'

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
}

/**
 * unused → acquiring → held → released; acquiring → unused when the checkout fails; held →
 * acquiring when a `retry` statement lost its connection. `released` is final: the connection
 * went back.
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
  /** The plugin's own transaction control: what to send, decided when it is sent. */
  plan: ((status: string | null) => Step) | undefined
  resolve (result: QueryResult<any>): void
  reject (error: unknown): void
  /** The caller's promise (a refusal marks it handled). */
  promise: Promise<unknown> | undefined
}

/** The parts of a response (HTTP/1 `ServerResponse`, `Http2ServerResponse`, light-my-request) used here. */
interface Response {
  destroyed?: boolean
  writableEnded?: boolean
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

/** The `db` a `transaction()` callback gets: the request's connection, inside that transaction. */
class TransactionDb implements RequestDb {
  readonly #handle: RequestHandle
  /** Its transaction has ended (or one around it has). */
  over = false

  constructor (handle: RequestHandle) {
    this.#handle = handle
  }

  query (text: string | PgQueryConfig, values?: unknown[]): Promise<QueryResult<any>> {
    return this.#handle.runIn(this, text, values)
  }

  transaction<T> (fn: (db: RequestDb) => Promise<T>, options?: TransactionOptions): Promise<T> {
    return this.#handle.transactionIn(this, fn, options)
  }

  connection (): Promise<PoolClient> {
    return this.#handle.connectionIn(this)
  }
}

type Scope = RequestHandle | TransactionDb

export class RequestHandle implements RequestDb {
  readonly #pool: PgPool
  readonly #log: FastifyBaseLogger
  readonly #holder: Holder
  #state: State = 'unused'
  /**
   * The request has ended: no new statement is accepted. Statements issued before a reply that
   * completed normally still run (a handler may fire and forget an audit insert); then the
   * connection goes back.
   */
  #ended = false
  #conn: Conn | undefined
  #checkout: Promise<Conn> | undefined
  #abort: Abandon | undefined
  /** A statement of this request is on the wire. */
  #running = false
  /** Statements waiting for the checkout or for the one running. */
  readonly #queue: Job[] = []
  /** The transaction levels open on the connection. */
  readonly #frames = new Frames()
  /** `transaction()` calls still running, innermost last: only the innermost may send statements. */
  readonly #open: TransactionDb[] = []
  /** The `connection()` clients of this checkout, one per db that asked. */
  #clients: Map<Scope, GuardedClient> | undefined
  #origin: Error | undefined
  /** The statement timeout sent with statements (see timeout.ts), when one must be. */
  readonly #timeoutMs: number | undefined
  /** The open transaction already carries the statement timeout. */
  #timed = false
  #routeTx: RouteTx
  /** How the route's transaction begins. */
  readonly #beginWith: TransactionOptions | undefined
  /** The route's BEGIN, once it is queued; its frame once it ran. */
  #began: Promise<unknown> | undefined
  #routeFrame: Frame | undefined

  constructor (pool: PgPool, request: Holder & { log: FastifyBaseLogger }, response: Response, settings: RouteSettings) {
    this.#pool = pool
    this.#log = request.log
    this.#holder = request
    this.#timeoutMs = pool.timeoutToSend(settings.statementTimeoutMs)
    this.#beginWith = settings.transaction
    this.#routeTx = settings.transaction === undefined ? 'none' : 'pending'
    // 'close' fires on every way a response can end: sent, aborted, hijacked, timed out.
    if (ended(response)) this.#end(false)
    else response.once('close', () => this.#end(response.writableEnded === true))
  }

  query (text: string | PgQueryConfig, values?: unknown[]): Promise<QueryResult<any>> {
    return this.runIn(this, text, values)
  }

  transaction<T> (fn: (db: RequestDb) => Promise<T>, options?: TransactionOptions): Promise<T> {
    return this.transactionIn(this, fn, options)
  }

  connection (): Promise<PoolClient> {
    return this.connectionIn(this)
  }

  /** @internal `query()` of `request.db` or of a transaction's `db`. */
  runIn (scope: Scope, text: string | PgQueryConfig, values?: unknown[]): Promise<QueryResult<any>> {
    const refusal = this.#refusal(scope)
    if (refusal !== undefined) return this.#refuse(refusal)
    return this.#run(text, values, undefined)
  }

  /** Why `scope` cannot send a statement now, if it cannot. */
  #refusal (scope: Scope): Error | undefined {
    // After the route's transaction ended, a statement would run outside it: refused like after the end.
    if (this.#ended || this.#routeTx === 'ended') return new PgRequestEndedError()
    const innermost = this.#open[this.#open.length - 1]
    if (scope === (innermost ?? this)) return undefined
    if (scope !== this && (scope as TransactionDb).over) return new PgTransactionScopeError('This transaction has ended')
    return new PgTransactionScopeError('A transaction() opened through this db is still open: its statements go through the db passed to its callback')
  }

  /** A refused statement: the caller's promise rejects, and a handler that did not await it cannot crash the process. */
  #refuse (error: Error): Promise<never> {
    this.#warn(error)
    return refused(error)
  }

  /** A refusal, or a COMMIT lost on the way: worth a line with the route, whoever awaits the statement. */
  #warn (error: Error): void {
    const { method, routeOptions: { url: route } } = this.#holder
    if (error instanceof PgCommitUnknownError) {
      this.#log.warn({ err: error, method, route }, 'fastify-pg-pool: the connection was lost after COMMIT was sent; the transaction may or may not have committed')
    } else {
      this.#log.warn({ err: error, method, route }, 'fastify-pg-pool: a statement was refused and not sent')
    }
  }

  #run (text: string | PgQueryConfig, values: unknown[] | undefined, plan: Job['plan']): Promise<QueryResult<any>> {
    const job: Job = { text, values, retry: typeof text === 'object' && text?.retry === true, plan, resolve: noop, reject: noop, promise: undefined }
    const promise = new Promise<QueryResult<any>>((resolve, reject) => {
      job.resolve = resolve
      job.reject = reject
    })
    // Kept for a refusal to mark handled: a `retry` statement can go back into the queue.
    job.promise = promise
    if (this.#state === 'held' && !this.#running && this.#queue.length === 0) this.#send(job)
    else if (this.#state === 'released') return this.#refuse(new PgRequestEndedError())
    else {
      this.#queue.push(job)
      if (this.#state === 'unused') this.#move('acquiring')
    }
    return promise
  }

  /** @internal `transaction()` of `request.db` or of a transaction's `db`. */
  async transactionIn<T> (scope: Scope, fn: (db: RequestDb) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
    const refusal = this.#refusal(scope)
    if (refusal !== undefined) return await this.#refuse(refusal)
    checkTransactionOptions(options)
    const db = new TransactionDb(this)
    // From now on, statements through `scope` would join this transaction: they are refused.
    this.#open.push(db)
    let frame: Frame | undefined
    const opened = this.#run('begin', undefined, (status) => this.#frames.open(options, status, (f) => { frame = f }))
    let result: T
    try {
      await opened
      result = await fn(db)
    } catch (error) {
      // A rollback that cannot run (the connection died) changes nothing: the plugin rolls back
      // or destroys the connection when the request ends anyway. One the transaction around it
      // ended first is rolled back already.
      const ending = frame === undefined || db.over ? undefined : await this.#endFrame(frame, false).then(noop, (e: unknown) => e)
      this.#close(db)
      // Except the one thing a rollback can tell: there was nothing left to roll back.
      if (ending instanceof PgTransactionEndedEarlyError) throw Object.assign(ending, { cause: error })
      throw error
    }
    if (db.over) throw new PgTransactionScopeError('The transaction around this one ended before its callback finished, and rolled it back')
    this.#close(db)
    await this.#endFrame(frame as Frame, true)
    return result
  }

  /** A transaction's `db` stops (and so do those opened inside it that are still running). */
  #close (db: TransactionDb): void {
    const at = this.#open.indexOf(db)
    for (const inner of this.#open.splice(at)) inner.over = true
  }

  #endFrame (frame: Frame, commit: boolean): Promise<unknown> {
    return this.#run(commit ? 'commit' : 'rollback', undefined, (status) => this.#frames.close(frame, commit, status))
  }

  /**
   * @internal The route's transaction ends (its onSend hook): COMMIT when `commit`, else
   * ROLLBACK. A transaction PostgreSQL already aborted (a statement failed and the handler went
   * on) cannot commit: that throws FST_PG_TRANSACTION_ABORTED, so the reply does not claim success.
   */
  async endTransaction (commit: boolean): Promise<void> {
    if (this.#routeTx !== 'open' || this.#ended) {
      if (this.#routeTx === 'pending') this.#routeTx = 'ended'
      return
    }
    // Statements already queued run first, inside the transaction; later ones are refused.
    this.#routeTx = 'ended'
    // transaction() calls still running did not finish: their levels are rolled back.
    if (this.#open.length > 0) this.#close(this.#open[0] as TransactionDb)
    try {
      await this.#began
    } catch (error) {
      // A BEGIN that failed: the reply cannot claim a commit (nothing else to end).
      if (commit) throw error
      return
    }
    const ending = this.#endFrame(this.#routeFrame as Frame, commit)
    // A rollback that cannot run changes nothing: the end of the request rolls back or destroys.
    if (commit) await ending
    else await ending.catch((error: unknown) => { if (error instanceof PgTransactionEndedEarlyError) throw error })
  }

  /** @internal `connection()` of `request.db` or of a transaction's `db`. */
  async connectionIn (scope: Scope): Promise<PoolClient> {
    const refusal = this.#refusal(scope)
    if (refusal !== undefined) return await this.#refuse(refusal)
    if (this.#state === 'unused') this.#move('acquiring')
    if (this.#state === 'acquiring') await this.#checkout
    if (this.#state === 'held') await this.#began
    if (this.#state !== 'held') return await this.#refuse(new PgRequestEndedError())
    const again = this.#refusal(scope)
    if (again !== undefined) return await this.#refuse(again)
    const conn = this.#conn as Conn
    this.#clients ??= new Map()
    let guarded = this.#clients.get(scope)
    if (guarded === undefined) {
      // One client per db: its statements are refused whenever that db's would be (the outer
      // one's while a transaction() runs). release() cannot return it early: the plugin returns
      // it when the request ends; release(err) asks for it to be destroyed then, as with pg-pool.
      guarded = guardClient(
        conn,
        () => this.#state === 'held' ? this.#refusal(scope) : new PgRequestEndedError(),
        (error) => { if (error && this.#state === 'held') conn.broken = true },
        // Statements sent on the client directly are translated when they are handed to pg
        // (interleaved with request.db.query() calls still queued, the order is pg's).
        (statement) => {
          const step = this.#frames.size > 0 ? this.#frames.translate(statement, conn.client.getTransactionStatus()) : undefined
          return this.#pool.admit(conn, step === undefined ? statement : step.statement)
        },
        (error) => this.#warn(error)
      )
      this.#clients.set(scope, guarded)
    }
    return guarded.client
  }

  /** Closes the cursors and streams opened through this checkout's clients, which stop. */
  #closeClients (): void {
    if (this.#clients === undefined) return
    for (const guarded of this.#clients.values()) guarded.closeCursors()
    this.#clients = undefined
  }

  /**
   * The response closed. After a reply that completed normally, statements already issued still
   * run, then the connection goes back; after an abort (or a timeout, or a destroyed hijacked
   * socket) they are refused and the connection goes back at once.
   */
  #end (completed: boolean): void {
    this.#ended = true
    if (completed && (this.#running || this.#queue.length > 0)) return
    this.#move('released')
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
          this.#closeClients()
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
            this.#fail(error)
            if (this.#state === 'acquiring') this.#move(this.#ended ? 'released' : 'unused')
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
        if (this.#queue.length > 0) {
          this.#log.debug({ statements: this.#queue.length }, 'fastify-pg-pool: the request ended before its queued statements ran; they were not sent')
          this.#fail(new PgRequestEndedError())
        }
        if (prev === 'acquiring') (this.#abort as Abandon).abort(new PgRequestEndedError())
        else if (prev === 'held') {
          this.#closeClients()
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
        text: 'begin',
        values: undefined,
        retry: false,
        plan: (status) => this.#frames.open(options, status, (frame) => { this.#routeFrame = frame }),
        resolve,
        reject: (error) => {
          reject(error)
          // Nothing queued behind a failed BEGIN may run outside the transaction.
          this.#fail(error)
        },
        promise: undefined
      })
    })
    this.#began.catch(noop)
  }

  #send (job: Job): void {
    const conn = this.#conn as Conn
    // What the plugin sends for transaction control depends on the status the statement will
    // meet: pg must have read it (see Conn.unsettled).
    if ((job.plan !== undefined || this.#frames.size > 0) && !conn.dead && conn.unsettled()) return this.#whenSettled(conn, job)
    const tx = conn.client.getTransactionStatus()
    // Session state left by this checkout so far: a fresh connection would not have it.
    const stateless = !conn.dirty
    let step: Step | undefined
    let statement: unknown
    try {
      step = job.plan !== undefined ? job.plan(tx) : this.#frames.size > 0 ? this.#frames.translate(job.text, tx) : undefined
      statement = this.#pool.admit(conn, step === undefined ? job.text : step.statement)
    } catch (error) {
      if (error instanceof PgTransactionEndedEarlyError) {
        this.#log.warn({ route: this.#holder.routeOptions.url }, 'fastify-pg-pool: the transaction had already ended when the plugin came to end it; what ran in it may be committed')
      }
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
    // Never inside a transaction (the route's, the plugin's or one the handler began), and never
    // once the session has state a fresh connection would lack (SET ROLE, set_config, temporary
    // tables: see session.ts): the statement would run with other rights, or see other rows.
    const retry = job.retry && tx === 'I' && this.#routeTx === 'none' && this.#frames.size === 0 && stateless
    let settled = false
    const done = (error: Error | null, result?: QueryResult<any>): void => {
      // pg calls back twice when a value fails to serialise: at once, and at ReadyForQuery.
      if (settled) return
      settled = true
      this.#running = false
      if (step?.after !== undefined) error = step.after(error, result) ?? error
      if (error !== null) {
        conn.failed(error)
        if (isConnectionError(error)) {
          if (retry && this.#state === 'held') {
            job.retry = false
            this.#queue.unshift(job)
            this.#move('acquiring')
            return
          }
          error = lostConnectionError(error, step === undefined ? commits(job.text) : step.commits)
          if (error instanceof PgCommitUnknownError) this.#warn(error)
        }
        job.reject(error)
      } else {
        job.resolve(result as QueryResult<any>)
      }
      this.#next()
    }
    // The session is over (the server said FATAL, or the socket closed): nothing sent would run.
    // pg may not know yet and would write it, and a COMMIT written then would read as unknown.
    if (conn.dead) return done(notSentError(new Error('the connection was already lost')))
    try {
      sendStatement(conn.client, statement, job.values, timeoutMs, done)
    } catch (error) {
      // pg throws at once on a malformed call (a null query, a bad callback)
      done(error as Error)
    }
  }

  #whenSettled (conn: Conn, job: Job): void {
    this.#queue.unshift(job)
    const { client } = conn
    const go = (): void => {
      client.off('drain', go)
      client.off('end', go)
      if (this.#conn === conn && !this.#running) this.#next()
    }
    client.on('drain', go)
    client.on('end', go)
  }

  #next (): void {
    const job = this.#queue.shift()
    if (job !== undefined) this.#send(job)
    // The request ended while statements it issued were still to run: they have.
    else if (this.#ended && this.#state === 'held') this.#move('released')
  }

  /** Rejects every waiting statement; none of them ran. */
  #fail (error: unknown): void {
    for (const job of this.#queue.splice(0)) {
      // Marked handled: a statement fired and forgotten must not crash the process.
      job.promise?.catch(noop)
      job.reject(error)
    }
  }
}
