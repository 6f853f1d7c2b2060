import type { EventEmitter } from 'node:events'
import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import { PgAcquireTimeoutError, PgUnavailableError, withRetryAfter } from './errors.js'
import { Conn, type Holder, type Lease } from './conn.js'
import { DeadlineExceeded, roundTrip, withTimeout } from './deadline.js'
import { channels, WindowHistogram, type PoolCounters } from './metrics.js'
import type { ResolvedOptions } from './options.js'
import { isConnectTimeout } from './pg-internals.js'
import type { CheckoutSignal } from './queue.js'
import type { Slots } from './slots.js'
import { tell } from './pool-contract.js'

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

/**
 * The checkout policy: take a connection (idle, new, or after a wait), open a new one, ping one
 * that idled `pingIdleMs` or longer, hand it out; all within one deadline (`acquireTimeoutMs`)
 * covering the wait, the connect, the pings and the replacements. A dead connection is closed
 * and the checkout goes on with the next one, so the caller never sees it.
 */
export class Checkout {
  readonly #opts: ResolvedOptions
  readonly #log: FastifyBaseLogger
  readonly #counters: PoolCounters
  /** The public pool: named in diagnostics messages, and tells pg-pool's events. */
  readonly #owner: EventEmitter
  /** Set once the slots exist (they and this policy call each other). */
  slots!: Slots
  readonly waits = new WindowHistogram()
  /**
   * Connections that went idle before this moment are suspect: one of their peers died, so
   * they are pinged at their next checkout whatever their idle time (SQLAlchemy's pool
   * "invalidation", with a ping instead of a reconnect).
   */
  #suspectBefore = -Infinity

  constructor (owner: EventEmitter, opts: ResolvedOptions, log: FastifyBaseLogger, counters: PoolCounters) {
    this.#owner = owner
    this.#opts = opts
    this.#log = log
    this.#counters = counters
  }

  /**
   * A healthy connection within `acquireTimeoutMs`, leased to `holder`; or a coded 503. At once
   * (not a promise) when an idle one needs no ping and nobody waits: most checkouts under steady
   * load, which then cost no turn of the event loop.
   */
  acquire (options: AcquireOptions = {}): Conn | Promise<Conn> {
    const started = performance.now()
    let taken: Conn | Promise<Conn>
    try {
      taken = this.slots.take(started + this.#opts.acquireTimeoutMs, options.signal, options.log ?? this.#log)
    } catch (error) {
      return this.#failed(started, options, error)
    }
    if (taken instanceof Promise || this.#needsPing(taken) || options.signal?.aborted === true || this.slots.shut) {
      return this.#acquire(started, options, taken).then((conn) => this.#handedOut(conn, started, options), (error: unknown) => this.#failed(started, options, error))
    }
    return this.#handedOut(this.#lend(taken, options, 0), started, options)
  }

  #handedOut (conn: Conn, started: number, options: AcquireOptions): Conn {
    const { since, pings } = conn.lease as Lease
    this.#counters.acquires++
    this.waits.record(since - started, since)
    tell(this.#owner, this.#log, 'acquire', conn.client)
    if (channels.acquire.hasSubscribers) {
      // Never pooled before: opened for this checkout.
      channels.acquire.publish({ pool: this.#owner, requestId: options.holder?.id, waitMs: since - started, created: conn.idleSince === conn.createdAt, pings })
    }
    return conn
  }

  #failed (started: number, options: AcquireOptions, error: unknown): Promise<never> {
    if (channels.acquire.hasSubscribers) {
      channels.acquire.publish({ pool: this.#owner, requestId: options.holder?.id, waitMs: performance.now() - started, error })
    }
    return Promise.reject(error)
  }

  /** The rest of a checkout that could not be served at once: `first` is what `take` gave. */
  async #acquire (started: number, { signal, log = this.#log, holder, origin }: AcquireOptions, first: Conn | Promise<Conn>): Promise<Conn> {
    const deadline = started + this.#opts.acquireTimeoutMs
    let pings = 0
    let next: Conn | Promise<Conn> | undefined = first
    for (;;) {
      const conn = await (next ?? this.slots.take(deadline, signal, log))
      next = undefined
      this.#stillWanted(conn, signal)
      if (this.#needsPing(conn)) {
        pings++
        if (!await this.#ping(conn, deadline, log, holder)) continue
        this.#stillWanted(conn, signal) // the ping took a round trip: look again
        // Its lifetime may have ended meanwhile: never handed out again.
        if (conn.fate !== undefined) {
          this.slots.putBack(conn)
          continue
        }
      }
      return this.#lend(conn, { holder, origin }, pings)
    }
  }

  #lend (conn: Conn, { holder, origin }: AcquireOptions, pings: number): Conn {
    conn.lease = { holder, origin, since: performance.now(), pings, leaked: false }
    this.slots.move(conn, 'lent')
    return conn
  }

  /**
   * A checkout whose caller left, or whose pool has shut, puts its connection back and fails. One
   * that got its connection while the pool was closing goes on (pg-pool's `end()` lets queries
   * already under way finish): the pool waits for it as for any connection out.
   */
  #stillWanted (conn: Conn, signal: CheckoutSignal | undefined): void {
    if (signal?.aborted !== true && !this.slots.shut) return
    this.slots.putBack(conn)
    throw this.slots.shut ? this.slots.closedError() : signal?.reason
  }

  timeoutError (log: FastifyBaseLogger): Error {
    const { acquireTimeoutMs } = this.#opts
    this.#counters.acquireTimeouts++
    log.warn({ pool: this.slots.counts() }, `fastify-pg-pool: no connection within acquireTimeoutMs (${acquireTimeoutMs} ms)`)
    return withRetryAfter(new PgAcquireTimeoutError(acquireTimeoutMs), this.slots.retryAfter())
  }

  /** Opens a connection into a free slot, bounded by the checkout's deadline. */
  async open (deadline: number, log: FastifyBaseLogger): Promise<Conn> {
    const { Client, client: config, connectTimeoutMs, onConnect } = this.#opts
    const remaining = Math.max(1, Math.ceil(deadline - performance.now()))
    // Which limit cuts the connect short: the checkout deadline, or the user's connect timeout?
    const deadlineBound = connectTimeoutMs === 0 || remaining <= connectTimeoutMs
    const client = new Client({ ...config, connectionTimeoutMillis: deadlineBound ? remaining : connectTimeoutMs })
    const conn = new Conn(client, (lost, error) => this.#connectionLost(lost, error))
    this.slots.move(conn, 'opening')
    // Every client carries these for its whole life: an error never goes unheard.
    const lost = (error?: Error): void => {
      if (error !== undefined) this.#log.debug({ err: error }, 'fastify-pg-pool: connection error')
      conn.lost(error)
    }
    client.on('error', lost)
    client.on('end', () => lost())
    try {
      // In pg-pool's style (a callback): a `Client` of the user's may have no promise form.
      await new Promise<void>((resolve, reject) => client.connect((error: Error | null) => error ? reject(error) : resolve()))
      // The user's hook is bounded by the checkout deadline too.
      if (onConnect !== undefined) await withTimeout(onConnect(client), deadline - performance.now())
      this.slots.move(conn, 'checking')
      // (Not for one the pool closed meanwhile: no 'remove' would follow.)
      if (conn.state === 'checking') tell(this.#owner, this.#log, 'connect', client)
    } catch (error) {
      this.slots.move(conn, 'closed')
      if (!this.slots.serving) throw this.slots.closedError()
      // pg's connect timeout fired; when the deadline set it, it is ours.
      const timedOut = error instanceof DeadlineExceeded || (deadlineBound && isConnectTimeout(error))
      if (timedOut || performance.now() >= deadline) throw this.timeoutError(log)
      this.#counters.connectFailures++
      log.warn({ err: error }, 'fastify-pg-pool: could not open a connection')
      throw withRetryAfter(new PgUnavailableError(String((error as Error).message), { cause: error }), 1)
    }
    return conn
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
   * Its idle peers are suspect until proven alive; with pinging off they are closed. An idle one
   * that died with an error is pg-pool's 'error' event (told only to listeners: none is needed).
   */
  #connectionLost (conn: Conn, error: Error | undefined): void {
    this.#suspectBefore = performance.now()
    if (conn.state === 'idle') {
      if (error !== undefined) tell(this.#owner, this.#log, 'error', error, conn.client)
      this.slots.move(conn, 'closed', 'error')
    }
    if (this.#opts.pingIdleMs === Infinity) this.#closeSuspects()
  }

  /** Closes every idle connection that went idle before the last loss. */
  #closeSuspects (): void {
    this.slots.closeIdle((idle) => idle.idleSince < this.#suspectBefore, 'suspect')
  }

  /** Pings; true if the connection answered, else closes it. */
  async #ping (conn: Conn, deadline: number, log: FastifyBaseLogger, holder: Holder | undefined): Promise<boolean> {
    const now = performance.now()
    const timeoutMs = Math.min(this.#opts.pingTimeoutMs, deadline - now)
    /* c8 ignore next 4 -- only when a connection reaches a waiter within microseconds of its deadline */
    if (timeoutMs <= 0) {
      this.slots.putBack(conn)
      throw this.timeoutError(log)
    }
    const idleMs = Math.round(now - conn.idleSince)
    this.#counters.pings++
    try {
      await roundTrip(conn.client, '', timeoutMs)
      if (channels.ping.hasSubscribers) {
        channels.ping.publish({ pool: this.#owner, requestId: holder?.id, idleMs, durationMs: performance.now() - now, ok: true })
      }
      return true
    } catch (error) {
      this.#counters.pingFailures++
      if (channels.ping.hasSubscribers) {
        channels.ping.publish({ pool: this.#owner, requestId: holder?.id, idleMs, durationMs: performance.now() - now, ok: false, error })
      }
      log.debug({ err: error, idleMs }, 'fastify-pg-pool: ping failed; replacing the connection')
      this.slots.move(conn, 'closed', 'ping')
      // Its idle peers most likely share its fate (a blackholed network, a failover): close
      // them now rather than wait for one ping timeout each.
      this.#suspectBefore = performance.now()
      this.#closeSuspects()
      // A ping cut short by the checkout deadline (rather than by pingTimeoutMs) ends the checkout.
      if ((error instanceof DeadlineExceeded && timeoutMs < this.#opts.pingTimeoutMs) || performance.now() >= deadline) {
        throw this.timeoutError(log)
      }
      return false
    }
  }
}
