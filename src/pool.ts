import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { Client, PoolClient, QueryResult, QueryResultRow } from 'pg'
import {
  PgAcquireTimeoutError,
  PgDoubleReleaseError,
  PgPoolClosedError,
  PgQueueFullError,
  PgReleasedError,
  PgSessionStateError,
  PgUnavailableError,
  isConnectionError,
  lostConnectionError,
  withRetryAfter
} from './errors.js'
import { Conn, type DestroyReason, type Holder } from './conn.js'
import { DrainRate } from './drain.js'
import { channels, newCounters, WindowHistogram, WINDOW_MS, type PoolCounters, type Summary } from './metrics.js'
import { changesSession } from './session.js'
import { guardClient } from './guard.js'
import { isTransactionControl, sendStatement } from './timeout.js'
import { commits } from './transaction.js'
import { DeadlineExceeded, noop, roundTrip, withTimeout } from './deadline.js'
import { LeakDetector } from './leaks.js'
import { WaitQueue, type CheckoutSignal } from './queue.js'
import type { PgQueryConfig, ResolvedOptions } from './options.js'

export interface AcquireOptions {
  /** Aborting abandons the checkout: a waiting request takes no connection. */
  signal?: CheckoutSignal | undefined
  /** Who will hold the connection (for the saturation diagnosis). */
  holder?: Holder | undefined
  /** Where to log ping failures and missed deadlines (the request's logger). */
  log?: FastifyBaseLogger | undefined
  /** Where the checkout was asked for, for the leak warning (only when leak detection is on). */
  origin?: Error | undefined
}

/** Connections and checkouts right now. */
export interface PoolCounts {
  /** Connections open or being opened. */
  total: number
  /** Connections in the pool, ready to be handed out. */
  idle: number
  /** Connections checked out, being opened, pinged or returned. */
  active: number
  /** Checkouts waiting for a connection. */
  waiting: number
}

/** `fastify.pg.stats()`: JSON-serialisable, never holds a secret. */
export interface PoolStats extends PoolCounts, PoolCounters {
  /** How long checkouts waited for a connection (ms), over the last `windowMs`. */
  acquireWaitMs: Summary
  /** How long connections were held by their request or client (ms), over the last `windowMs`. */
  holdMs: Summary
  windowMs: number
}

/**
 * The connection pool: pg clients, an idle stack (last returned is first handed out, so cold
 * connections age out), a FIFO of waiting checkouts, and one deadline per checkout covering the
 * wait, the connect, the pings and the replacements.
 */
export class PgPool {
  readonly #opts: ResolvedOptions
  readonly #log: FastifyBaseLogger
  readonly #all = new Set<Conn>()
  readonly #idle: Conn[] = []
  readonly #waiters = new WaitQueue((waiter) => this.#timeoutError(waiter.log))
  readonly #drain = new DrainRate()
  /** open → closing (app.close(): no new checkouts) → closed (nothing left open). */
  #state: 'open' | 'closing' | 'closed' = 'open'
  #housekeeper: NodeJS.Timeout | undefined
  readonly #leaks: LeakDetector
  readonly #counters = newCounters()
  readonly #waits = new WindowHistogram()
  readonly #holds = new WindowHistogram()
  #closeTimer: NodeJS.Timeout | undefined
  /**
   * Connections that went idle before this moment are suspect: one of their peers died, so
   * they are pinged at their next checkout whatever their idle time (SQLAlchemy's pool
   * "invalidation", with a ping instead of a reconnect).
   */
  #suspectBefore = -Infinity
  /** Behind PgBouncer, the statement timeout sent with each statement (see timeout.ts). */
  readonly #timeoutMs: number | undefined
  #onClosed!: () => void
  readonly #closed = new Promise<void>((resolve) => { this.#onClosed = resolve })

  constructor (opts: ResolvedOptions, log: FastifyBaseLogger) {
    this.#opts = opts
    this.#log = log
    this.#timeoutMs = this.timeoutToSend(undefined)
    // Closing idle connections on time to the millisecond is not worth a timer per release.
    if (Number.isFinite(opts.idleTimeoutMs)) {
      this.#housekeeper = setInterval(() => this.#sweep(), Math.max(10, Math.min(opts.idleTimeoutMs / 2, 5000))).unref()
    }
    // A checkout held past the threshold is reported within a quarter of it.
    this.#leaks = new LeakDetector(opts.leakDetectionMs, log, this.#all, () => { this.#counters.leaks++ })
  }

  /** @internal Leak detection is on: checkouts should bring an `origin`. */
  get leakDetection (): boolean { return this.#leaks.on }

  get totalCount (): number { return this.#all.size }
  get idleCount (): number { return this.#idle.length }
  get waitingCount (): number { return this.#waiters.size }

  /**
   * @internal Every statement passes here just before it is sent on `conn`, and is sent as
   * returned. Directly on PostgreSQL: notes whether it may change the session (to reset it on
   * return). Behind PgBouncer: refuses session state outside a transaction, and sends named
   * prepared statements unnamed (PgBouncer 1.18 cannot keep them: the next transaction may run
   * on another server connection).
   */
  admit (conn: Conn, statement: unknown): unknown {
    if (!this.#opts.pgbouncer) {
      // With sessionReset 'always' the text is not trusted: whatever ran may have left state.
      if (!conn.dirty && (this.#opts.sessionReset === 'always' || changesSession(statement))) conn.dirty = true
      return statement
    }
    if (conn.client.getTransactionStatus() === 'I' && changesSession(statement)) throw new PgSessionStateError()
    const named = statement as { name?: unknown, submit?: unknown } | null
    if (typeof named?.name === 'string' && typeof named.submit !== 'function') return { ...named, name: undefined }
    return statement
  }

  /**
   * @internal The statement timeout to send with each statement (see timeout.ts): behind
   * PgBouncer, any; directly, only a route's own (the plugin's is a connection parameter).
   */
  timeoutToSend (routeMs: number | undefined): number | undefined {
    const { statementTimeoutMs, pgbouncer } = this.#opts
    const ms = routeMs ?? statementTimeoutMs
    if (pgbouncer) return ms > 0 ? ms : undefined
    return ms === statementTimeoutMs ? undefined : ms
  }

  /** Seconds until a checkout arriving now would likely be served: the `Retry-After` of 503s. */
  retryAfter (): number {
    return this.#drain.retryAfterSeconds(this.#waiters.size, this.#opts.acquireTimeoutMs)
  }

  /**
   * Saturated: a checkout arriving now would be refused (every connection busy and the wait
   * queue full), or the oldest waiting checkout has used half its deadline (the queue is not
   * draining in time; those behind it would time out).
   */
  saturated (): boolean {
    const { max, maxWaiting, acquireTimeoutMs } = this.#opts
    if (this.#waiters.size >= maxWaiting && this.#idle.length === 0 && this.#all.size >= max) return true
    return this.oldestWaitMs() >= acquireTimeoutMs / 2
  }

  /** How long the oldest waiting checkout has waited (0 when none waits). */
  oldestWaitMs (): number {
    return this.#waiters.oldestWaitMs()
  }

  /**
   * Connections not idle, for the saturation diagnosis: who holds each one and for how long,
   * or what it is doing if nobody holds it (being opened or pinged, finishing a query its
   * request left behind, rolling back).
   */
  * busy (): Generator<{ holder: Holder | string, heldMs: number }> {
    const now = performance.now()
    for (const conn of this.#all) {
      if (conn.state === 'lent') yield { holder: conn.holder ?? '(outside a request)', heldMs: now - conn.lentAt }
      else if (conn.state !== 'idle') yield { holder: `(${conn.state})`, heldMs: 0 }
    }
  }

  /** Connections and checkouts right now: four numbers, cheap enough for every health check. */
  counts (): PoolCounts {
    const total = this.#all.size
    const idle = this.#idle.length
    return { total, idle, active: total - idle, waiting: this.#waiters.size }
  }

  /** Counts, counters since start, and wait and hold times over the last minute. */
  stats (): PoolStats {
    const now = performance.now()
    const counters = this.#counters
    return {
      ...this.counts(),
      ...counters,
      destroyed: { ...counters.destroyed },
      acquireWaitMs: this.#waits.summary(now),
      holdMs: this.#holds.summary(now),
      windowMs: WINDOW_MS
    }
  }

  /** @internal A request was shed with 503 (FST_PG_SATURATED). */
  shed (request: Holder, retryAfter: number): void {
    this.#counters.shed++
    if (channels.shed.hasSubscribers) {
      channels.shed.publish({ pool: this, requestId: request.id, method: request.method, url: request.url, retryAfter })
    }
  }

  /**
   * @internal The plugin's checkout; users call `connect()`, which returns a guarded client.
   * Checks out a healthy connection within `acquireTimeoutMs`, or rejects with a coded 503.
   * A connection idle for `pingIdleMs` or longer is pinged first; a dead one is destroyed and
   * the checkout goes on with the next one, so the caller never sees it.
   */
  async acquire (options: AcquireOptions = {}): Promise<Conn> {
    const started = performance.now()
    try {
      const conn = await this.#acquire(started, options)
      conn.lentAt = performance.now()
      this.#counters.acquires++
      this.#waits.record(conn.lentAt - started, conn.lentAt)
      if (channels.acquire.hasSubscribers) {
        // Never pooled before: opened for this checkout.
        channels.acquire.publish({ pool: this, requestId: options.holder?.id, waitMs: conn.lentAt - started, created: conn.idleSince === conn.createdAt, pings: conn.pinged })
      }
      return conn
    } catch (error) {
      if (channels.acquire.hasSubscribers) {
        channels.acquire.publish({ pool: this, requestId: options.holder?.id, waitMs: performance.now() - started, error })
      }
      throw error
    }
  }

  async #acquire (started: number, { signal, log = this.#log, holder, origin }: AcquireOptions): Promise<Conn> {
    const deadline = started + this.#opts.acquireTimeoutMs
    let pinged = 0
    for (;;) {
      const conn = await this.#take(deadline, signal, log)
      this.#stillWanted(conn, signal)
      if (this.#needsPing(conn)) {
        pinged++
        if (!await this.#ping(conn, deadline, log, holder)) continue
        this.#stillWanted(conn, signal) // the ping took a round trip: look again
      }
      conn.state = 'lent'
      conn.holder = holder
      conn.origin = origin
      conn.leaked = false
      conn.pinged = pinged
      conn.dirty = false
      conn.uses++
      if (this.#opts.allowExitOnIdle) conn.holdProcess(true)
      return conn
    }
  }

  /** A checkout whose caller left, or whose pool closed, puts its connection back and fails. */
  #stillWanted (conn: Conn, signal: CheckoutSignal | undefined): void {
    if (signal?.aborted !== true && this.#state === 'open') return
    this.#checkin(conn)
    throw this.#state === 'open' ? signal?.reason : this.#closedError()
  }

  /**
   * @internal Takes back a connection from `acquire`. A query still running keeps it out of the pool
   * until it settles; an open or failed transaction is rolled back; a broken connection, or
   * one whose rollback fails, is destroyed.
   */
  release (conn: Conn): void {
    if (conn.state !== 'lent') return
    const now = performance.now()
    this.#holds.record(now - conn.lentAt, now)
    if (channels.release.hasSubscribers) channels.release.publish({ pool: this, requestId: conn.holder?.id, holdMs: now - conn.lentAt })
    conn.state = 'returning'
    // Whether its session is reset on the way back (see sessionReset), decided once.
    const { sessionReset } = this.#opts
    conn.dirty = sessionReset === 'always' || (sessionReset === 'auto' && conn.dirty)
    conn.holder = undefined
    conn.origin = undefined
    this.#drain.record()
    this.#return(conn)
  }

  /**
   * The steps back to the pool, each one re-entering here when it completes: wait for a running
   * query, roll back a transaction, reset the session, check in. A failed step destroys.
   */
  #return (conn: Conn): void {
    if (conn.state !== 'returning') return // destroyed meanwhile (close)
    if (conn.broken) return this.#destroy(conn, 'error')
    // Closing it ends its transaction, running statement and session: nothing to clean.
    if (!this.#opts.pooling) return this.#destroy(conn, 'unpooled')
    if (conn.busy) return this.#afterDrain(conn)
    const tx = conn.client.getTransactionStatus()
    if (tx === 'T' || tx === 'E') return this.#step(conn, 'ROLLBACK')
    if (conn.dirty) return this.#step(conn, 'DISCARD ALL')
    this.#checkin(conn)
  }

  /** One statement on the way back, bounded by `pingTimeoutMs`. */
  #step (conn: Conn, sql: 'ROLLBACK' | 'DISCARD ALL'): void {
    roundTrip(conn.client, sql, this.#opts.pingTimeoutMs).then(
      () => {
        if (sql === 'DISCARD ALL') conn.sessionReset()
        this.#return(conn)
      },
      (error: unknown) => {
        this.#log.debug({ err: error, sql }, 'fastify-pg-pool: could not clean the connection on return; destroying it')
        conn.broken = true
        this.#return(conn)
      }
    )
  }

  /**
   * Checks out a client for work outside a request (migrations, jobs). Call `release()` once
   * when done; `release(err)` destroys it instead. A second call throws FST_PG_DOUBLE_RELEASE.
   */
  async connect (): Promise<PoolClient> {
    const conn = await this.acquire({ origin: this.#leaks.origin() })
    let released = false
    const guarded = guardClient(conn, () => released ? new PgReleasedError() : undefined, (error) => {
      if (released) throw new PgDoubleReleaseError()
      released = true
      if (error) conn.broken = true
      guarded.closeCursors()
      this.release(conn)
    }, (statement) => this.admit(conn, statement))
    return guarded.client
  }

  /**
   * `pool.query()`: one statement on a connection checked out for it alone. With
   * `{ retry: true }` it is sent once more on a fresh connection after a connection-class error.
   */
  async query<R extends QueryResultRow = any>(textOrConfig: string | PgQueryConfig, values?: unknown[]): Promise<QueryResult<R>> {
    const conn = await this.acquire({ origin: this.#leaks.origin() })
    try {
      const statement = this.admit(conn, textOrConfig)
      const timeoutMs = this.#timeoutMs !== undefined && !isTransactionControl(statement) ? this.#timeoutMs : undefined
      const result = await new Promise<QueryResult<R>>((resolve, reject) => {
        sendStatement(conn.client, statement, values, timeoutMs, (error, res) => error ? reject(error) : resolve(res))
      })
      this.release(conn)
      return result
    } catch (error) {
      conn.failed(error)
      this.release(conn)
      if (!isConnectionError(error)) throw error
      // A statement alone on its checkout: no session state of a request can be missing on a
      // fresh connection, so `retry` needs nothing more than the user's word that it is safe.
      const config = textOrConfig as PgQueryConfig | null
      if (config?.retry === true) return await this.query<R>({ ...config, retry: false }, values)
      throw lostConnectionError(error as Error, commits(textOrConfig))
    }
  }

  /**
   * The app is shutting down (Fastify's preClose): from now on, connections have
   * `closeTimeoutMs` to come back; after that they are destroyed, running queries and all.
   * Requests still being served may go on checking out until then.
   */
  drain (): void {
    if (this.#closeTimer !== undefined || this.#state === 'closed') return
    this.#closeTimer = setTimeout(() => this.#shut(), this.#opts.closeTimeoutMs).unref()
  }

  /**
   * Stops handing out connections, fails the waiting checkouts, closes idle connections and
   * waits for checked-out ones until the `closeTimeoutMs` deadline set by `drain()`.
   */
  close (): Promise<void> {
    this.drain()
    if (this.#state === 'open') {
      this.#state = 'closing'
      this.#waiters.rejectAll(() => this.#closedError())
      for (const conn of [...this.#idle]) this.#destroy(conn, 'close')
      if (this.#all.size === 0) this.#shut()
    }
    return this.#closed
  }

  /** The end: everything still open is destroyed. */
  #shut (): void {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    clearTimeout(this.#closeTimer)
    clearInterval(this.#housekeeper)
    this.#leaks.stop()
    this.#waiters.rejectAll(() => this.#closedError())
    for (const conn of this.#all) {
      if (conn.state === 'lent') {
        this.#log.warn({ heldMs: Math.round(performance.now() - conn.lentAt) }, 'fastify-pg-pool: closeTimeoutMs passed; destroying a connection still checked out')
      }
      this.#destroy(conn, 'close')
    }
    this.#onClosed()
  }

  #closedError (): Error {
    return withRetryAfter(new PgPoolClosedError(), 1)
  }

  /** An idle connection, a new one, or a place in the queue; waiting checkouts go first. */
  #take (deadline: number, signal: CheckoutSignal | undefined, log: FastifyBaseLogger): Conn | Promise<Conn> {
    if (this.#state !== 'open') throw this.#closedError()
    if (this.#waiters.size === 0) {
      const conn = this.#idle.pop()
      if (conn !== undefined) return claim(conn)
      if (this.#all.size < this.#opts.max) return this.#open(deadline, log)
    }
    if (signal?.aborted === true) throw signal.reason
    if (this.#waiters.size >= this.#opts.maxWaiting) {
      this.#counters.queueFull++
      throw withRetryAfter(new PgQueueFullError(this.#opts.maxWaiting), this.retryAfter())
    }
    return this.#waiters.wait(deadline, signal, log)
  }

  /** Hands free connections, or free slots, to waiting checkouts in arrival order. */
  #pulse (): void {
    while (this.#waiters.size > 0 && this.#state === 'open') {
      const conn = this.#idle.pop()
      if (conn === undefined && this.#all.size >= this.#opts.max) return
      const waiter = this.#waiters.next()
      waiter.resolve(conn === undefined ? this.#open(waiter.deadline, waiter.log) : claim(conn))
    }
  }

  #timeoutError (log: FastifyBaseLogger): Error {
    const { acquireTimeoutMs } = this.#opts
    this.#counters.acquireTimeouts++
    log.warn({ pool: this.counts() }, `fastify-pg-pool: no connection within acquireTimeoutMs (${acquireTimeoutMs} ms)`)
    return withRetryAfter(new PgAcquireTimeoutError(acquireTimeoutMs), this.retryAfter())
  }

  async #open (deadline: number, log: FastifyBaseLogger): Promise<Conn> {
    const { Client, client: config, connectTimeoutMs, onConnect } = this.#opts
    const remaining = Math.max(1, Math.ceil(deadline - performance.now()))
    // Which limit cuts the connect short: the checkout deadline, or the user's connect timeout?
    const deadlineBound = connectTimeoutMs === 0 || remaining <= connectTimeoutMs
    const client = new Client({ ...config, connectionTimeoutMillis: deadlineBound ? remaining : connectTimeoutMs })
    const conn = new Conn(client, (lost) => this.#connectionLost(lost))
    this.#all.add(conn)
    this.#watch(conn)
    try {
      await client.connect()
      // The user's hook is bounded by the checkout deadline too.
      if (onConnect !== undefined) await withTimeout(onConnect(client), deadline - performance.now())
      conn.state = 'checking'
      this.#counters.created++
      const { maxLifetimeMs, maxLifetimeJitter } = this.#opts
      if (Number.isFinite(maxLifetimeMs)) {
        // Each connection gets its own lifetime, so a pool opened at once is not renewed at once.
        const lifetime = maxLifetimeMs * (1 - Math.random() * maxLifetimeJitter)
        conn.lifetime = setTimeout(() => this.#expire(conn), lifetime).unref()
      }
    } catch (error) {
      this.#destroy(conn, 'error')
      if (this.#state !== 'open') throw this.#closedError()
      // pg's connect timeout says 'timeout expired'; when the deadline set it, it is ours.
      const timedOut = error instanceof DeadlineExceeded || (deadlineBound && (error as Error).message === 'timeout expired')
      if (timedOut || performance.now() >= deadline) throw this.#timeoutError(log)
      this.#counters.connectFailures++
      log.warn({ err: error }, 'fastify-pg-pool: could not open a connection')
      throw withRetryAfter(new PgUnavailableError(String((error as Error).message), { cause: error }), 1)
    }
    return conn
  }

  /** Listeners every client carries for its whole life: an error never goes unheard. */
  #watch (conn: Conn): void {
    const { client } = conn
    const lost = (error?: Error): void => {
      if (error !== undefined) this.#log.debug({ err: error }, 'fastify-pg-pool: connection error')
      conn.lost()
    }
    client.on('error', lost)
    client.on('end', () => lost())
    client.on('drain', () => { conn.busy = false })
    // Every query passes here, the user's own through connection() too: the pool must know
    // whether a query is still running when the connection comes back.
    const query = client.query
    client.query = function (this: Client, ...args: unknown[]) {
      const wasBusy = conn.busy
      conn.busy = true
      try {
        return (query as (...a: unknown[]) => unknown).apply(this, args)
      } catch (error) {
        conn.busy = wasBusy // pg refused the call outright (a null query): nothing was queued
        throw error
      }
    } as Client['query']
  }

  /**
   * A reused connection is pinged before it is handed out if it idled `pingIdleMs` or longer,
   * or went idle before a peer was found dead.
   */
  #needsPing (conn: Conn): boolean {
    if (conn.idleSince === conn.createdAt) return false // never pooled: straight from connect
    return conn.idleSince < this.#suspectBefore || performance.now() - conn.idleSince >= this.#opts.pingIdleMs
  }

  /**
   * A connection died under us (a failover, a restart, a network cut, or just that backend).
   * Its idle peers are suspect until proven alive; with pinging off they are closed.
   */
  #connectionLost (conn: Conn): void {
    // (Not called for our own destroy: it marks the connection broken first.)
    this.#suspectBefore = performance.now()
    if (conn.state === 'idle') this.#destroy(conn, 'error')
    if (this.#opts.pingIdleMs === Infinity) this.#closeSuspects('suspect')
  }

  /** Closes every idle connection that went idle before the last loss. */
  #closeSuspects (reason: DestroyReason): void {
    for (const idle of this.#idle.slice()) {
      if (idle.idleSince < this.#suspectBefore) this.#destroy(idle, reason)
    }
  }

  /** Pings; true if the connection answered, else destroys it. */
  async #ping (conn: Conn, deadline: number, log: FastifyBaseLogger, holder: Holder | undefined): Promise<boolean> {
    const now = performance.now()
    const timeoutMs = Math.min(this.#opts.pingTimeoutMs, deadline - now)
    /* c8 ignore next 4 -- only when a connection reaches a waiter within microseconds of its deadline */
    if (timeoutMs <= 0) {
      this.#checkin(conn)
      throw this.#timeoutError(log)
    }
    const idleMs = Math.round(now - conn.idleSince)
    this.#counters.pings++
    try {
      await roundTrip(conn.client, '', timeoutMs)
      if (channels.ping.hasSubscribers) {
        channels.ping.publish({ pool: this, requestId: holder?.id, idleMs, durationMs: performance.now() - now, ok: true })
      }
      return true
    } catch (error) {
      this.#counters.pingFailures++
      if (channels.ping.hasSubscribers) {
        channels.ping.publish({ pool: this, requestId: holder?.id, idleMs, durationMs: performance.now() - now, ok: false, error })
      }
      log.debug({ err: error, idleMs }, 'fastify-pg-pool: ping failed; replacing the connection')
      this.#destroy(conn, 'ping')
      // Its idle peers most likely share its fate (a blackholed network, a failover): close
      // them now rather than wait for one ping timeout each.
      this.#suspectBefore = performance.now()
      this.#closeSuspects('suspect')
      // A ping cut short by the checkout deadline (rather than by pingTimeoutMs) ends the checkout.
      if ((error instanceof DeadlineExceeded && timeoutMs < this.#opts.pingTimeoutMs) || performance.now() >= deadline) {
        throw this.#timeoutError(log)
      }
      return false
    }
  }

  #afterDrain (conn: Conn): void {
    const { client } = conn
    const done = (): void => {
      client.off('drain', done)
      client.off('end', done)
      this.#return(conn)
    }
    client.on('drain', done)
    client.on('end', done)
  }

  /**
   * Puts a connection back in the pool, or destroys it if it must not be reused. Callers have
   * ruled out a destroyed or broken connection (#return checks; a checkout gives back only
   * what it just took or opened).
   */
  #checkin (conn: Conn): void {
    if (this.#state !== 'open') return this.#destroy(conn, 'close')
    if (!this.#opts.pooling) return this.#destroy(conn, 'unpooled')
    if (conn.uses >= this.#opts.maxUses) return this.#destroy(conn, 'uses')
    if (conn.expired) return this.#destroy(conn, 'lifetime')
    conn.state = 'idle'
    conn.idleSince = performance.now()
    if (this.#opts.allowExitOnIdle) conn.holdProcess(false)
    this.#idle.push(conn)
    this.#pulse()
  }

  #destroy (conn: Conn, reason: DestroyReason): void {
    if (conn.state === 'gone') return
    if (conn.state === 'idle') this.#idle.splice(this.#idle.indexOf(conn), 1)
    const opened = conn.state !== 'opening' // (one that never opened is a connect failure, counted as such)
    conn.state = 'gone'
    conn.broken = true
    clearTimeout(conn.lifetime)
    this.#all.delete(conn)
    if (opened) {
      this.#counters.destroyed[reason]++
      if (channels.destroy.hasSubscribers) {
        channels.destroy.publish({ pool: this, reason, ageMs: performance.now() - conn.createdAt, uses: conn.uses })
      }
    }
    this.#log.debug({ reason }, 'fastify-pg-pool: connection closed')
    // end() is graceful on a healthy idle socket and destroys one that is dead or mid-query.
    conn.client.end().catch(noop)
    if (this.#state === 'closing' && this.#all.size === 0) this.#shut()
    this.#pulse()
  }

  /** Closes idle connections past `idleTimeoutMillis`, down to `min`. */
  #sweep (): void {
    const now = performance.now()
    const { idleTimeoutMs, min } = this.#opts
    // The bottom of the stack idled longest.
    for (const conn of this.#idle.slice()) {
      if (this.#all.size <= min || now - conn.idleSince < idleTimeoutMs) return
      this.#destroy(conn, 'idle')
    }
  }

  /** A connection reached its lifetime: closed now if idle, else when it comes back. */
  #expire (conn: Conn): void {
    conn.expired = true
    if (conn.state === 'idle') this.#destroy(conn, 'lifetime')
  }
}

/** Marks a connection taken from the idle stack, before anything else can see it. */
function claim (conn: Conn): Conn {
  conn.state = 'checking'
  return conn
}
