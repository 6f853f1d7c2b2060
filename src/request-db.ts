import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { PoolClient, QueryResult } from 'pg'
import {
  PgCallbackError,
  PgCancelledError,
  PgCommitUnknownError,
  PgIdentityError,
  PgRequestEndedError,
  PgTransactionScopeError,
  PgTransactionEndedEarlyError,
  isConnectionError,
  lostConnectionError,
  neverRan,
  noAnswerError,
  notSentError,
  refused,
  withRetryAfter
} from './errors.js'
import type { RequestDb } from './db.js'
import { acquireOrFallBack } from './fallback.js'
import { guardClient, type GuardedClient } from './guard.js'
import type { Conn, Holder } from './conn.js'
import type { PgQueryConfig } from './options.js'
import type { AcquireOptions, Pool } from './pool.js'
import { Abandon } from './queue.js'
import type { RouteSettings } from './route.js'
import { takesIdentity, type Callback, type Carry } from './send.js'
import { REENTERED, RequestIdentity, type Identity } from './identity.js'
import { DEFAULT } from './databases.js'
import { noop } from './deadline.js'
import { busy, isReadTimeout } from './pg-internals.js'
import { RequestPool } from './request-pool.js'
import { Transactions, type Plan, type Runner } from './request-tx.js'
import { commits, controlOf, type Frames, type Step, type TransactionOptions } from './transaction.js'
import { textOf } from './sql.js'

export type { RequestDb } from './db.js'

/**
 * What the request has of the pool, and the data each state carries:
 * unused → acquiring → held → released; acquiring → unused when the checkout fails; held →
 * acquiring when a `retry` statement lost its connection; held → unused when the reply is complete
 * and nothing needs the connection (it went back; a later statement checks out again). `released`
 * is final: the connection went back.
 */
type State =
  | { readonly kind: 'unused' }
  | { readonly kind: 'acquiring', readonly checkout: Promise<Conn>, readonly abandon: Abandon }
  /** `running`: the statement of this request that is with pg (its callback has not come). */
  | { readonly kind: 'held', readonly conn: Conn, running: Job | undefined }
  | { readonly kind: 'released' }

const UNUSED: State = { kind: 'unused' }
const RELEASED: State = { kind: 'released' }

interface Job {
  text: string | PgQueryConfig
  values: unknown[] | undefined
  /** `retry` was asked for. */
  readonly retry: boolean
  /** It was sent again already: once at most, asked for (`retry`) or not (it never ran). */
  resent: boolean
  /** The plugin's own transaction control: what to send, decided when it is sent. */
  plan: Plan | undefined
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
  once (event: 'close' | 'prefinish', fn: () => void): unknown
}

/**
 * Too late to listen for 'close'? HTTP/1 responses (and light-my-request's) set `destroyed`
 * just before emitting it; an HTTP/2 response has no `destroyed`, its stream does.
 */
function ended (response: Response): boolean {
  return response.destroyed === true || response.stream?.destroyed === true
}

interface HandleOptions {
  /** The route's `fallback` database: its pool, and its name for a named one. */
  fallback?: { pool: Pool, label: string | undefined } | undefined
  /** The database's name, for a named one. */
  label?: string | undefined
}

/**
 * `request.db`. Statements queue here and go to pg one at a time; the first one checks out the
 * connection. What happens between `query()` and the wire is `#send`.
 */
export class RequestHandle implements Runner {
  /** The pool of its database; the fallback's once a checkout fell back to it. */
  #pool: Pool
  /**
   * Where the first checkout goes if the database is down or saturated (the route's `fallback`),
   * until that checkout settled.
   */
  #fallback: HandleOptions['fallback']
  readonly #settings: RouteSettings
  #log: FastifyBaseLogger
  readonly #holder: Holder & { log: FastifyBaseLogger }
  #state: State = UNUSED
  /**
   * The request has ended: no new statement is accepted. Statements issued before a reply that
   * completed normally still run (a handler may fire and forget an audit insert); then the
   * connection goes back.
   */
  ended = false
  /** Statements waiting for the checkout or for the one running. */
  readonly #queue: Job[] = []
  /** Made when the request first uses a transaction (or its route has one): most never do. */
  #txs: Transactions | undefined
  /** The `connection()` clients of this checkout, one per db that asked. */
  #clients: Map<RequestDb, GuardedClient> | undefined
  #origin: Error | undefined
  /** What travels with its statements: the statement timeout, whether they are prepared, the identity (see send.ts). */
  #carry: Carry
  /** The request's identity on this database (see identity.ts), had on the first checkout. */
  readonly #identity: RequestIdentity | undefined
  /** `pool`, made on first use. */
  #view: RequestPool | undefined
  /** Every pg.Pool view of this request's dbs: none gives a turn after the end. */
  #views: RequestPool[] | undefined

  constructor (pool: Pool, request: Holder & { log: FastifyBaseLogger }, response: Response, settings: RouteSettings, { fallback, label }: HandleOptions = {}) {
    this.#pool = pool
    this.#fallback = fallback
    this.#settings = settings
    // A named database's lines say which one.
    this.#log = label === undefined ? request.log : request.log.child({ db: label })
    this.#holder = request
    this.#carry = { clock: pool.wire.clock(settings.statementTimeoutMs), prepare: settings.prepare ?? pool.wire.prepares, identity: undefined }
    // (Most apps have none: nothing is made for it per request.)
    const resolver = settings.identity === false ? undefined : settings.identity ?? pool.identity
    if (resolver !== undefined) this.#identity = new RequestIdentity(resolver, request as unknown as FastifyRequest, label ?? DEFAULT, pool.acquireTimeoutMs)
    if (settings.transaction !== undefined) this.#txs = new Transactions(this, settings.transaction)
    // 'close' fires on every way a response can end: sent, aborted, hijacked, timed out. A reply
    // that is complete ('prefinish', `res.end()`, HTTP/1) may take long to reach a slow client:
    // the connection goes back then if nothing still needs it (see #park).
    if (ended(response)) this.#end(false)
    else {
      response.once('close', () => this.#end(response.writableEnded === true))
      response.once('prefinish', () => this.#park())
    }
  }

  query (text: string | PgQueryConfig, values?: unknown[], ...rest: unknown[]): Promise<QueryResult<any>> {
    return this.runIn(this, text, values, rest[0])
  }

  transaction<T> (fn: (db: RequestDb) => Promise<T>, options?: TransactionOptions): Promise<T> {
    this.#txs ??= new Transactions(this, undefined)
    return this.#txs.run(this, fn, options)
  }

  connection (): Promise<PoolClient> {
    return this.connectionIn(this)
  }

  get pool (): RequestPool {
    return (this.#view ??= this.poolOf(this))
  }

  /** @internal The pool this handle's statements go to, once decided (a fallback may still change it). */
  get where (): Pool | undefined {
    return this.#fallback === undefined ? this.#pool : undefined
  }

  /** @internal A pg.Pool view of `scope` (request.db or a transaction's db), told when the request ends. */
  poolOf (scope: RequestDb): RequestPool {
    const view = new RequestPool(scope, this.#pool.options, this.#pool.acquireTimeoutMs)
    if (this.ended) view.abandon()
    else (this.#views ??= []).push(view)
    return view
  }

  /** @internal `query()` of `request.db` or of a transaction's `db`. */
  runIn (scope: RequestDb, text: string | PgQueryConfig, values?: unknown[], callback?: unknown): Promise<QueryResult<any>> {
    // pg's callback style would never be called back: refused at once, loudly, nothing checked out.
    if (typeof values === 'function' || typeof callback === 'function' || typeof text === 'function') throw new PgCallbackError('request.db.query() takes no callback: await the promise it returns')
    const refusal = this.#refusal(scope)
    if (refusal !== undefined) return this.refuse(refusal)
    return this.run(text, values, undefined)
  }

  /** @internal `transaction()` of a transaction's `db`. */
  transactionIn<T> (scope: RequestDb, fn: (db: RequestDb) => Promise<T>, options?: TransactionOptions): Promise<T> {
    return (this.#txs as Transactions).run(scope, fn, options)
  }

  /** @internal The route's transaction ends (its onSend hook): see Transactions.endRoute. */
  endTransaction (commit: boolean): Promise<void> {
    return (this.#txs as Transactions).endRoute(commit)
  }

  /** Why `scope` cannot send a statement now, if it cannot: with no transaction ever used, only the request's end. */
  #refusal (scope: RequestDb): Error | undefined {
    if (this.#txs !== undefined) return this.#txs.refusal(scope)
    return this.ended ? new PgRequestEndedError() : undefined
  }

  /** @internal A refused statement: the caller's promise rejects, and a handler that did not await it cannot crash the process. */
  refuse (error: Error): Promise<never> {
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

  /** @internal Queues a statement, and sends it at once if nothing is ahead of it. */
  run (text: string | PgQueryConfig, values: unknown[] | undefined, plan: Plan | undefined): Promise<QueryResult<any>> {
    // From inside its own identity function: it would wait for the identity, forever.
    if (this.#identity?.running === true) return this.refuse(new PgIdentityError(REENTERED))
    const job = newJob(text, values, plan)
    const state = this.#state
    if (state.kind === 'held' && state.running === undefined && this.#queue.length === 0) this.#send(state, job)
    else if (state.kind === 'released') return this.refuse(new PgRequestEndedError())
    else {
      this.#queue.push(job)
      if (state.kind === 'unused') this.#move('acquiring')
    }
    return job.promise as Promise<QueryResult<any>>
  }

  /** @internal The route's BEGIN, ahead of every statement: nothing queued behind it runs if it fails. */
  runFirst (plan: Plan): Promise<unknown> {
    const job = newJob('begin', undefined, plan)
    const reject = job.reject
    job.reject = (error) => {
      reject(error)
      this.#fail(error)
    }
    this.#queue.unshift(job)
    return job.promise as Promise<unknown>
  }

  /** @internal `connection()` of `request.db` or of a transaction's `db`. */
  connectionIn (scope: RequestDb): Promise<PoolClient> {
    const refusal = this.#identity?.running === true ? new PgIdentityError(REENTERED) : this.#refusal(scope)
    if (refusal !== undefined) return this.refuse(refusal)
    const client = this.#clientOf(scope)
    // A failed checkout or a refusal met on the way (the request ended meanwhile) must not crash
    // a handler that did not await it; whoever awaits it gets the error.
    client.catch(noop)
    return client
  }

  async #clientOf (scope: RequestDb): Promise<PoolClient> {
    if (this.#state.kind === 'unused') this.#move('acquiring')
    if (this.#state.kind === 'acquiring') await this.#state.checkout
    if (this.#state.kind === 'held') await this.#txs?.began
    const state = this.#state
    if (state.kind !== 'held') return await this.refuse(new PgRequestEndedError())
    const again = this.#refusal(scope)
    if (again !== undefined) return await this.refuse(again)
    this.#clients ??= new Map()
    return (this.#clients.get(scope) ?? this.#newClient(scope, state.conn)).client
  }

  /**
   * One client per db: its statements are refused whenever that db's would be (the outer one's
   * while a transaction() runs). release() cannot return it early: the plugin returns it when
   * the request ends; release(err) asks for it to be destroyed then, as with pg-pool.
   */
  #newClient (scope: RequestDb, conn: Conn): GuardedClient {
    const holds = (): boolean => this.#state.kind === 'held' && this.#state.conn === conn
    const guarded = guardClient(
      conn,
      () => holds() ? this.#refusal(scope) : new PgRequestEndedError(),
      (error) => { if (error && holds()) conn.condemn('error') },
      // Statements sent on the client directly are translated when they are handed to pg
      // (interleaved with request.db.query() calls still queued, the order is pg's).
      (statement) => {
        const frames = this.#txs?.frames
        const step = frames !== undefined && frames.size > 0 ? frames.translate(statement, conn.client.getTransactionStatus()) : undefined
        const admitted = this.#pool.wire.admit(conn, step === undefined ? statement : step.statement)
        // A cursor, stream or COPY: the identity goes just before it (inside a transaction).
        const { identity } = this.#carry
        if (identity !== undefined && typeof (admitted as { submit?: unknown } | null)?.submit === 'function') this.#pool.wire.lead(conn, admitted, identity)
        return admitted
      },
      // (No statement timeout travels with these: see the README's statementTimeoutMs.)
      (statement, values, callback) => {
        try {
          this.#pool.wire.deliver(conn, statement, values, { ...this.#carry, clock: undefined }, callback)
        } catch (error) {
          process.nextTick(callback, error)
        }
      },
      (error) => this.#warn(error)
    )
    this.#clients?.set(scope, guarded)
    return guarded
  }

  /**
   * Closes the cursors and streams opened through this checkout's clients, which stop: a read
   * still awaited fails as a statement cancelled because the request ended (or its connection
   * was lost, for a `retry` that checks out another).
   */
  #closeClients (): void {
    if (this.#clients === undefined) return
    const why = new PgCancelledError(this.ended ? 'its request ended' : 'its connection was lost')
    for (const guarded of this.#clients.values()) guarded.close(why)
    this.#clients = undefined
  }

  /**
   * The response closed. After a reply that completed normally, statements already issued still
   * run, then the connection goes back; after an abort (or a timeout, or a destroyed hijacked
   * socket) they are refused and the connection goes back at once.
   */
  #end (completed: boolean): void {
    this.ended = true
    for (const view of this.#views ?? []) view.abandon()
    // Nobody reads a cursor now, and one left suspended would hold back what runs behind it.
    this.#closeClients()
    const state = this.#state
    if (completed && ((state.kind === 'held' && state.running !== undefined) || this.#queue.length > 0)) return
    this.#move('released')
  }

  /**
   * The reply is complete: the connection goes back now unless something on it is still needed
   * (a statement running or queued, a `connection()` client handed out, a transaction open,
   * session state). A statement issued later (an `onResponse` hook) checks out again.
   */
  #park (): void {
    const state = this.#state
    if (state.kind !== 'held' || state.running !== undefined || this.#queue.length > 0 || this.#clients !== undefined) return
    const { conn } = state
    if (conn.dirty || busy(conn.client) || conn.client.getTransactionStatus() !== 'I') return
    this.#move('unused')
  }

  /** The one place where the state changes, with everything each change implies. */
  #move (next: 'acquiring' | 'released' | 'unused'): void
  #move (next: 'held', conn: Conn): void
  #move (next: State['kind'], conn?: Conn): void {
    const prev = this.#state
    switch (next) {
      case 'acquiring': {
        // A `retry` statement lost the connection: give it back (it is destroyed) and check out
        // another; the statement waits at the head of the queue.
        if (prev.kind === 'held') this.#giveBack(prev.conn)
        const abandon = new Abandon()
        // The stack of the request's first use of request.db: the handler's line, for the leak warning.
        if (this.#pool.leakDetection) this.#origin ??= new Error('checked out here')
        const options = { signal: abandon, log: this.#log, holder: this.#holder, origin: this.#origin }
        const checkout = this.#checkout(options)
        // An idle connection, handed out at once: the statement goes out now.
        if (!(checkout instanceof Promise)) return this.#move('held', checkout)
        const state = this.#state = { kind: 'acquiring', checkout, abandon }
        checkout.then(
          // The pool checks the abort signal last thing before it resolves, and the request
          // can only end in a later event: the state is still this one here.
          (got) => this.#move('held', got),
          (error: unknown) => {
            // (The request ended meanwhile: what was queued failed with it.)
            if (this.#state !== state) return
            this.#fail(error)
            this.#move(this.ended ? 'released' : 'unused')
          }
        )
        break
      }
      case 'held': {
        const state = this.#state = { kind: 'held', conn: conn as Conn, running: undefined }
        // The route's transaction begins on the request's first statement, before it.
        this.#txs?.checkedOut()
        this.#next(state)
        break
      }
      case 'unused':
        // (From held: the reply is complete, see #park.)
        if (prev.kind === 'held') this.#giveBack(prev.conn)
        this.#state = UNUSED
        break
      case 'released':
        this.#state = RELEASED
        // Most requests end with nothing queued: no error (and no stack) is built for them.
        if (this.#queue.length > 0) {
          this.#log.debug({ statements: this.#queue.length }, 'fastify-pg-pool: the request ended before its queued statements ran; they were not sent')
          this.#fail(new PgRequestEndedError())
        }
        if (prev.kind === 'acquiring') prev.abandon.abort(new PgRequestEndedError())
        else if (prev.kind === 'held') {
          // A statement still running is cancelled on the way back: a handler that fired and
          // forgot it must not crash for that.
          prev.running?.promise?.catch(noop)
          this.#giveBack(prev.conn)
        }
        break
    }
  }

  /**
   * The connection, once the request's identity is had: both at once when they are at hand (a
   * sync identity function, an idle connection). A connection is not held while an async
   * identity function runs, nor checked out when it fails.
   */
  #checkout (options: AcquireOptions): Conn | Promise<Conn> {
    const acquire = (): Conn | Promise<Conn> => this.#fallback === undefined ? this.#pool.acquire(options) : this.#acquireOrFallBack(options)
    if (this.#identity === undefined) return acquire()
    let identity: Identity | undefined | Promise<Identity | undefined>
    try {
      identity = this.#identity.get()
    } catch (error) {
      return Promise.reject(error)
    }
    const had = (it: Identity | undefined): Conn | Promise<Conn> => {
      if (it !== this.#carry.identity) this.#carry = { ...this.#carry, identity: it }
      return acquire()
    }
    return identity instanceof Promise ? identity.then(had) : had(identity)
  }

  /**
   * The route's database, or its fallback (see fallback.ts): the request goes on where it got its
   * connection (after a failed checkout, its next statement may fall back again).
   */
  async #acquireOrFallBack (options: AcquireOptions): Promise<Conn> {
    const fallback = this.#fallback as NonNullable<HandleOptions['fallback']>
    const got = await acquireOrFallBack(this.#pool, fallback.pool, options, this.#log)
    this.#fallback = undefined
    if (got.pool === fallback.pool) {
      this.#pool = fallback.pool
      // (The identity stays the route's database's: the fallback serves the same data.)
      this.#carry = { ...this.#carry, clock: fallback.pool.wire.clock(this.#settings.statementTimeoutMs), prepare: this.#settings.prepare ?? fallback.pool.wire.prepares }
      this.#log = fallback.label === undefined ? this.#holder.log : this.#holder.log.child({ db: fallback.label })
    }
    return got.conn
  }

  #giveBack (conn: Conn): void {
    this.#closeClients()
    this.#pool.release(conn)
  }

  /**
   * Between `query()` and the wire: the plugin's transaction control is planned, or the user's
   * translated inside the plugin's transactions (both from the status the statement will meet:
   * pg must have read it), then the wire admits and sends it with its timeout. The outcome is
   * checked for a lost connection (retried once when asked and safe, else coded).
   */
  #send (state: State & { kind: 'held' }, job: Job): void {
    const { conn } = state
    const frames = this.#txs?.frames
    const framed = frames !== undefined && frames.size > 0
    // pg is still busy with what a `connection()` client handed it (a cursor, a COPY): the
    // statement waits here rather than in pg's queue, where the end of an aborted request could
    // no longer take it back. The plugin's own control would wait forever behind a suspended
    // cursor: a transaction's cursors end with it anyway.
    if (!conn.dead && !conn.stuck && busy(conn.client)) {
      if (job.plan !== undefined) {
        const why = new PgTransactionScopeError('The transaction this cursor or stream read in has ended')
        for (const guarded of this.#clients?.values() ?? []) guarded.closeCursors(why)
      }
      return this.#whenSettled(conn, job)
    }
    const tx = conn.client.getTransactionStatus()
    // Never inside a transaction (the route's, the plugin's or one the handler began), and never
    // once the session has state a fresh connection would lack (SET ROLE, set_config, temporary
    // tables: see session.ts): the statement would run with other rights, or see other rows.
    const fresh = tx === 'I' && (this.#txs?.none ?? true) && !conn.dirty
    // The session is over (the server said FATAL, or the socket closed): nothing sent would run.
    // pg may not know yet and would write it, and a COMMIT written then would read as unknown.
    // (Nor is the status it last read worth planning from: a transaction begun in the same
    // batch as the statement that lost it never reported itself.)
    if (conn.dead || conn.stuck) {
      state.running = job
      return this.#outcome(state, job, undefined, fresh)(notSentError(new Error(conn.dead ? 'the connection was already lost' : 'the connection stopped answering')))
    }
    let step: Step | undefined
    let statement: unknown
    try {
      step = job.plan !== undefined ? job.plan(tx) : framed ? (frames as Frames).translate(job.text, tx) : undefined
      statement = step === undefined ? job.text : step.statement
    } catch (error) {
      if (error instanceof PgTransactionEndedEarlyError) {
        this.#log.warn({ route: this.#holder.routeOptions.url }, 'fastify-pg-pool: the transaction had already ended when the plugin came to end it; what ran in it may be committed')
      }
      job.reject(error)
      return this.#next(state)
    }
    // The route's BEGIN rides with the request's first statement: one round trip for both.
    const first = job.plan !== undefined && tx === 'I' ? this.#ridesWithBegin() : undefined
    if (first !== undefined) return this.#sendWithBegin(state, job, step as Step, first)
    state.running = job
    const done = this.#outcome(state, job, step, fresh)
    try {
      this.#pool.wire.send(conn, statement, job.values, this.#carry, done)
    } catch (error) {
      // Refused by the wire (session state behind PgBouncer), or by pg at once (a malformed call).
      done(error as Error)
    }
  }

  /**
   * What settles `job` when pg answers: its step's reading of the outcome, a resend on another
   * connection (asked for, or one that never ran, and `fresh`), a coded failure; then the next
   * statement.
   */
  #outcome (state: State & { kind: 'held' }, job: Job, step: Step | undefined, fresh: boolean): Callback {
    const { conn } = state
    let settled = false
    return (error, result) => {
      // pg calls back twice when a value fails to serialise: at once, and at ReadyForQuery.
      if (settled) return
      settled = true
      state.running = undefined
      if (step?.after !== undefined) error = step.after(error, result) ?? error
      if (error === null) job.resolve(result as QueryResult<any>)
      // Sent again on another connection: when asked (`retry`), or once when the server had
      // ended the idle session before the statement reached it (it never ran).
      else if (isConnectionError(error) && fresh && !job.resent && (job.retry || neverRan(error)) && this.#state === state) {
        conn.failed(error)
        job.resent = true
        this.#queue.unshift(job)
        return this.#move('acquiring')
      } else job.reject(this.#failure(conn, error, step === undefined ? commits(job.text) : step.commits))
      this.#next(state)
    }
  }

  /**
   * The statement that can ride with a BEGIN about to be sent: the next one queued, if it is a
   * plain statement (not the plugin's control, not the user's, which is translated once the
   * transaction is open; not a cursor). Taken out of the queue.
   */
  #ridesWithBegin (): Job | undefined {
    const next = this.#queue[0]
    if (next === undefined || next.plan !== undefined) return undefined
    const text = textOf(next.text)
    if (text === undefined || typeof (next.text as { submit?: unknown }).submit === 'function' || controlOf(text) !== undefined) return undefined
    // (One that cannot have the identity in front of it has it sent alone, once the transaction is open.)
    if (this.#carry.identity !== undefined && takesIdentity(next.text) !== 'front') return undefined
    return this.#queue.shift()
  }

  /**
   * `begin` and `job` in one round trip (PrefixedQuery): the BEGIN settles first, from whether it
   * ran (a failed statement fails inside the transaction, as it would have after a BEGIN of its
   * own); a BEGIN that failed fails the statement too, which never ran.
   */
  #sendWithBegin (state: State & { kind: 'held' }, begin: Job, step: Step, job: Job): void {
    state.running = job
    const done = this.#outcome(state, job, undefined, false)
    const both: Callback = (error, result, passed = 0) => {
      const began = error === null || passed > 0
      step.after?.(began ? null : error, undefined)
      if (began) begin.resolve(undefined as never)
      else begin.reject(this.#failure(state.conn, error as Error, false))
      done(error, result)
    }
    // (A plain statement, checked above, inside the transaction it begins: neither pg nor the
    // wire refuses one synchronously.)
    this.#pool.wire.send(state.conn, job.text, job.values, this.#carry, both, step.statement as string)
  }

  /**
   * A statement's error as its caller gets it: one the plugin cancelled because the request ended
   * (or the app closed) coded so, a lost connection coded (a COMMIT's as unknown).
   */
  #failure (conn: Conn, error: Error, commit: boolean): Error {
    if (conn.cancelled && (error as { code?: unknown }).code === '57014') {
      return withRetryAfter(new PgCancelledError(this.ended ? 'its request ended' : 'the app is closing', { cause: error }), 1)
    }
    conn.failed(error)
    if (isReadTimeout(error)) return noAnswerError(error)
    if (!isConnectionError(error)) return error
    const coded = lostConnectionError(error, commit)
    if (coded instanceof PgCommitUnknownError) this.#warn(coded)
    return coded
  }

  #whenSettled (conn: Conn, job: Job): void {
    this.#queue.unshift(job)
    const { client } = conn
    const go = (): void => {
      client.off('drain', go)
      client.off('end', go)
      const state = this.#state
      if (state.kind === 'held' && state.conn === conn && state.running === undefined) this.#next(state)
    }
    client.on('drain', go)
    client.on('end', go)
  }

  #next (state: State & { kind: 'held' }): void {
    const job = this.#queue.shift()
    if (job !== undefined) this.#send(state, job)
    // The request ended while statements it issued were still to run: they have.
    else if (this.ended && this.#state === state) this.#move('released')
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

function newJob (text: string | PgQueryConfig, values: unknown[] | undefined, plan: Plan | undefined): Job {
  const job: Job = { text, values, retry: typeof text === 'object' && text?.retry === true, resent: false, plan, resolve: noop, reject: noop, promise: undefined }
  // Kept for a refusal to mark handled: a `retry` statement can go back into the queue.
  job.promise = new Promise<QueryResult<any>>((resolve, reject) => {
    job.resolve = resolve
    job.reject = reject
  })
  return job
}
