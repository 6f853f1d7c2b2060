import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { PoolClient, PoolOptions, QueryResult } from 'pg'
import { PgDoubleReleaseError, PgReleasedError, isConnectionError, lostConnectionError, neverRan, noAnswerError } from './errors.js'
import { Checkin } from './checkin.js'
import { Checkout, type AcquireOptions } from './checkout.js'
import type { Conn, Holder } from './conn.js'
import { guardClient } from './guard.js'
import { LeakDetector } from './leaks.js'
import { channels, newCounters, WINDOW_MS, type PoolCounters, type Summary } from './metrics.js'
import type { PgIdentityResolver } from './identity.js'
import type { PgQueryConfig, ResolvedOptions } from './options.js'
import { Slots, type PoolCounts } from './slots.js'
import { Wire, type Carry } from './send.js'
import { PoolContract, type PgPoolLike } from './pool-contract.js'
import { busy, isReadTimeout } from './pg-internals.js'
import { commits } from './transaction.js'

export type { AcquireOptions } from './checkout.js'
export type { PoolCounts } from './slots.js'

/** `fastify.pg.stats()`: JSON-serialisable, never holds a secret. */
export interface PoolStats extends PoolCounts, PoolCounters {
  /** How long checkouts waited for a connection (ms), over the last `windowMs`. */
  acquireWaitMs: Summary
  /** How long connections were held by their request or client (ms), over the last `windowMs`. */
  holdMs: Summary
  windowMs: number
}

/**
 * `fastify.pg.pool`: the pool behind `request.db`, and a pg.Pool to the libraries that take one
 * (its events, `connect()`, `query()` and `end()`, promise or callback; see the README for where
 * it deliberately differs from pg-pool).
 */
export interface PgPool extends PgPoolLike {
  /**
   * Checks out a client for work outside a request (migrations, jobs). Call `release()` once
   * when done; `release(err)` destroys it instead. A second call throws FST_PG_DOUBLE_RELEASE.
   */
  connect (): Promise<PoolClient>
  connect (callback: (err: Error | undefined, client: PoolClient | undefined, done: (release?: any) => void) => void): void
  /** Connections and checkouts right now: four numbers, cheap enough for every health check. */
  counts (): PoolCounts
  /** Counts, counters since start, and wait and hold times over the last minute. */
  stats (): PoolStats
  /**
   * Closes the pool for good (`end()` by its Fastify name; `app.close()` calls it): checkouts
   * fail from now on with FST_PG_POOL_CLOSED, idle connections close, checked-out ones have
   * `closeTimeoutMs` to come back, then their statements are cancelled and they are destroyed.
   */
  close (): Promise<void>
}

/**
 * The public face over the pool's parts: slots (slots.ts, the mechanism), the checkout and return
 * policies (checkout.ts, checkin.ts), the wire statements go through (send.ts).
 */
export class Pool extends PoolContract implements PgPool {
  readonly #opts: ResolvedOptions
  readonly #counters = newCounters()
  readonly #slots: Slots
  readonly #checkout: Checkout
  readonly #checkin: Checkin
  readonly #leaks: LeakDetector
  /** @internal Every statement is admitted and sent through it. */
  readonly wire: Wire
  /** @internal The plugin's checkout: a healthy connection within `acquireTimeoutMs`, or a coded 503. */
  readonly acquire: (options?: AcquireOptions) => Conn | Promise<Conn>
  /** @internal Takes back a connection from `acquire` (see checkin.ts). */
  readonly release: (conn: Conn, error?: unknown) => void
  /** @internal How long a checkout may wait (`acquireTimeoutMs`). */
  get acquireTimeoutMs (): number { return this.#opts.acquireTimeoutMs }
  /** @internal The `identity` option: who a request's statements run as here. */
  get identity (): PgIdentityResolver | undefined { return this.#opts.identity }
  /** @internal Leak detection is on: checkouts should bring an `origin`. */
  readonly leakDetection: boolean
  /** What travels with `fastify.pg.query()` statements: the app's own, so no identity. */
  readonly #carry: Carry
  readonly options: PoolOptions

  constructor (opts: ResolvedOptions, log: FastifyBaseLogger) {
    super()
    this.#opts = opts
    this.options = poolOptions(opts)
    this.wire = new Wire(opts)
    this.#carry = { clock: this.wire.clock(undefined), prepare: this.wire.prepares, identity: undefined }
    const checkout = this.#checkout = new Checkout(this, opts, log, this.#counters)
    this.#slots = checkout.slots = new Slots(this, opts, log, this.#counters, {
      open: (deadline, log) => checkout.open(deadline, log),
      expired: (waiter) => checkout.timeoutError(waiter.log),
      shut: (running) => {
        this.#leaks.stop()
        return this.#cancelAll(running)
      }
    })
    this.#checkin = new Checkin(this, opts, log, this.#slots, this.#counters)
    // A checkout held past the threshold is reported within a quarter of it.
    this.#leaks = new LeakDetector(opts.leakDetectionMs, log, { [Symbol.iterator]: () => this.#slots.conns() }, () => { this.#counters.leaks++ })
    // The request path calls the policies straight, not through a method of this face.
    this.acquire = checkout.acquire.bind(checkout)
    this.release = this.#checkin.release.bind(this.#checkin)
    this.leakDetection = this.#leaks.on
  }

  get totalCount (): number { return this.#slots.size }
  get idleCount (): number { return this.#slots.idleCount }
  get waitingCount (): number { return this.#slots.waiters.size }
  /** Connections past their lifetime, still checked out: closed when they come back. */
  get expiredCount (): number {
    let expired = 0
    for (const conn of this.#slots.conns()) if (conn.fate === 'lifetime' && conn.state !== 'idle') expired++
    return expired
  }

  counts (): PoolCounts {
    return this.#slots.counts()
  }

  stats (): PoolStats {
    const now = performance.now()
    const counters = this.#counters
    return {
      ...this.counts(),
      ...counters,
      destroyed: { ...counters.destroyed },
      acquireWaitMs: this.#checkout.waits.summary(now),
      holdMs: this.#checkin.holds.summary(now),
      windowMs: WINDOW_MS
    }
  }

  /** @internal Seconds until a checkout arriving now would likely be served: the `Retry-After` of 503s. */
  retryAfter (): number {
    return this.#slots.retryAfter()
  }

  /**
   * @internal Saturated: a checkout arriving now would be refused (every connection busy and the
   * wait queue full), or the oldest waiting checkout has used half its deadline (the queue is
   * not emptying in time; those behind it would time out).
   */
  saturated (): boolean {
    const { max, maxWaiting, acquireTimeoutMs } = this.#opts
    const { total, idle, waiting } = this.#slots.counts()
    if (waiting >= maxWaiting && idle === 0 && total >= max) return true
    return this.oldestWaitMs() >= acquireTimeoutMs / 2
  }

  /** @internal How long the oldest waiting checkout has waited (0 when none waits). */
  oldestWaitMs (): number {
    return this.#slots.waiters.oldestWaitMs()
  }

  /**
   * @internal Connections not idle, for the saturation diagnosis: who holds each one and for how
   * long, or what it is doing if nobody holds it (being opened or pinged, finishing a statement
   * its request left behind, rolling back).
   */
  * busy (): Generator<{ holder: Holder | string, heldMs: number }> {
    const now = performance.now()
    for (const { lease, state } of this.#slots.conns()) {
      // (A connection is leased while it is lent.)
      if (lease !== undefined) yield { holder: lease.holder ?? '(outside a request)', heldMs: now - lease.since }
      else if (state !== 'idle') yield { holder: `(${state})`, heldMs: 0 }
    }
  }

  /** @internal A request was shed with 503 (FST_PG_SATURATED). */
  shed (request: Holder, retryAfter: number): void {
    this.#counters.shed++
    if (channels.shed.hasSubscribers) {
      channels.shed.publish({ pool: this, requestId: request.id, method: request.method, url: request.url, retryAfter })
    }
  }

  protected async checkout (): Promise<PoolClient> {
    const conn = await this.acquire({ origin: this.#leaks.origin() })
    let released = false
    const guarded = guardClient(conn, () => released ? new PgReleasedError() : undefined, (error) => {
      if (released) throw new PgDoubleReleaseError()
      released = true
      if (error) conn.condemn('error')
      guarded.close(new PgReleasedError())
      this.release(conn, error === false ? undefined : error)
    }, (statement) => this.wire.admit(conn, statement), (statement, values, callback) => this.wire.call(conn, statement, values, callback, this.wire.prepares))
    return guarded.client
  }

  protected async run (textOrConfig: string | PgQueryConfig, values: unknown[] | undefined, resent = false): Promise<QueryResult<any>> {
    const conn = await this.acquire({ origin: this.#leaks.origin() })
    try {
      const result = await new Promise<QueryResult<any>>((resolve, reject) => {
        this.wire.send(conn, textOrConfig, values, this.#carry, (error, res) => error ? reject(error) : resolve(res))
      })
      this.release(conn)
      return result
    } catch (error) {
      conn.failed(error)
      this.release(conn)
      if (isReadTimeout(error)) throw noAnswerError(error as Error)
      if (!isConnectionError(error)) throw error
      // A statement alone on its checkout: no session state of a request can be missing on a
      // fresh connection, so `retry` needs nothing more than the user's word that it is safe.
      // Or it never ran: the server had ended the idle session before the statement reached it.
      // Sent again once at most.
      if (!resent && ((textOrConfig as PgQueryConfig | null)?.retry === true || neverRan(error))) return await this.run(textOrConfig, values, true)
      throw lostConnectionError(error as Error, commits(textOrConfig))
    }
  }

  /** Cancels the statements still running at the close deadline: none outlives the app. */
  async #cancelAll (conns: Conn[]): Promise<void> {
    // (One coming back is cancelled on its way, if need be.)
    await Promise.all(conns.filter((conn) => conn.state === 'lent' && busy(conn.client) && !conn.dead).map((conn) => this.#checkin.cancel(conn)))
  }

  /** @internal The app is shutting down (Fastify's preClose): `closeTimeoutMs` starts now. */
  windDown (): void {
    this.#slots.windDown()
  }

  protected shutdown (): Promise<void> {
    return this.#slots.close()
  }

  close (): Promise<void> {
    return this.end()
  }
}

/**
 * pg-pool's `options`: the connection settings with pg-pool's own resolved. The password and the
 * connection string (which may carry one) are there for libraries that open connections of their
 * own, and kept out of logs and JSON, as pg-pool keeps the password.
 */
function poolOptions (opts: ResolvedOptions): PoolOptions {
  const options: PoolOptions = {
    ...opts.client,
    max: opts.max,
    min: opts.min,
    idleTimeoutMillis: Number.isFinite(opts.idleTimeoutMs) ? opts.idleTimeoutMs : 0,
    connectionTimeoutMillis: opts.connectTimeoutMs,
    maxUses: opts.maxUses,
    maxLifetimeSeconds: Number.isFinite(opts.maxLifetimeMs) ? opts.maxLifetimeMs / 1000 : 0,
    allowExitOnIdle: opts.allowExitOnIdle
  }
  for (const key of ['password', 'connectionString'] as const) {
    if (key in options) Object.defineProperty(options, key, { enumerable: false, value: options[key], writable: true, configurable: true })
  }
  return options
}
