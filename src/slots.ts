import type { EventEmitter } from 'node:events'
import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import { PgPoolClosedError, PgQueueFullError, withRetryAfter } from './errors.js'
import type { Conn, DestroyReason } from './conn.js'
import { channels, type PoolCounters } from './metrics.js'
import { holdProcess } from './pg-internals.js'
import { noop } from './deadline.js'
import { ReturnRate } from './return-rate.js'
import { WaitQueue, type CheckoutSignal, type Waiter } from './queue.js'
import type { ResolvedOptions } from './options.js'
import { tell } from './pool-contract.js'

/**
 * The pool's mechanism: slots (up to `max` connections), the idle stack (last returned is first
 * handed out, so cold connections age out), the queue of waiting checkouts, and the life of each
 * connection. It knows nothing of PostgreSQL: opening a connection is the checkout policy's
 * (checkout.ts), cleaning one that comes back the return policy's (checkin.ts).
 *
 * A connection's life, every change made by `move()`:
 *
 * | from → to | when | what `move` does |
 * | --- | --- | --- |
 * | (new) → opening | a checkout found a free slot | joins the set: the slot is taken |
 * | opening → checking | connected, `onConnect` ran | counted as created; its lifetime timer starts |
 * | idle → checking | a checkout took it | (it left the idle stack when taken) |
 * | checking → lent | handed out (with its lease), pinged if it idled long | its session counts as clean; keeps the process alive (`allowExitOnIdle`) |
 * | checking → idle, returning → idle | a checkout was abandoned; a return came out clean | stamped idle, no longer keeps the process alive, pushed on the stack; a waiter is served |
 * | lent → returning | its holder let it go | lease ended; counted in the rate of returns (`Retry-After`); the return policy takes over |
 * | any → closed | failed, unpooled, past `maxUses`, lifetime or `idleTimeoutMillis`, pool closed | leaves stack and set, counted by reason (pg-pool's 'remove' event), client ended; a waiter gets the slot |
 *
 * `lent` is running while pg has a statement of it running or queued (`busy()` in pg-internals.ts
 * reads it from pg, the one authority on it). A statement still running when its holder lets go
 * is cancelled while `returning` (checkin.ts, step 1).
 */

/** open → winding down (Fastify's preClose: `closeTimeoutMs` runs, checkouts still served) → closing (no checkouts) → closed. */
type Life = 'open' | 'winding down' | 'closing' | 'closed'

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

export interface SlotHooks {
  /** Opens a connection into a free slot (it is `add`ed before the first await). */
  open (deadline: number, log: FastifyBaseLogger): Promise<Conn>
  /** The error for a checkout that waited past its deadline. */
  expired (waiter: Waiter): Error
  /** The pool closes for good (the leak detector stops); `running` are still in use: closed once this settles. */
  shut (running: Conn[]): Promise<void>
}

export class Slots {
  readonly #opts: ResolvedOptions
  readonly #log: FastifyBaseLogger
  readonly #counters: PoolCounters
  readonly #hooks: SlotHooks
  readonly #all = new Set<Conn>()
  readonly #idle: Conn[] = []
  readonly waiters: WaitQueue
  #life: Life = 'open'
  #closeTimer: NodeJS.Timeout | undefined
  #housekeeper: NodeJS.Timeout | undefined
  #onClosed!: () => void
  readonly #closed = new Promise<void>((resolve) => { this.#onClosed = resolve })
  /** How fast connections come back: the basis of `Retry-After`. */
  readonly #returns = new ReturnRate()
  /** The public pool: named in diagnostics messages, and tells pg-pool's events. */
  readonly #owner: EventEmitter

  constructor (owner: EventEmitter, opts: ResolvedOptions, log: FastifyBaseLogger, counters: PoolCounters, hooks: SlotHooks) {
    this.#owner = owner
    this.#opts = opts
    this.#log = log
    this.#counters = counters
    this.#hooks = hooks
    this.waiters = new WaitQueue((waiter) => hooks.expired(waiter))
    // Closing idle connections on time to the millisecond is not worth a timer per release.
    if (Number.isFinite(opts.idleTimeoutMs)) {
      this.#housekeeper = setInterval(() => this.#sweep(), Math.max(10, Math.min(opts.idleTimeoutMs / 2, 5000))).unref()
    }
  }

  get size (): number { return this.#all.size }
  get idleCount (): number { return this.#idle.length }
  /** Four numbers, cheap enough for every health check. */
  counts (): PoolCounts {
    const total = this.#all.size
    const idle = this.#idle.length
    return { total, idle, active: total - idle, waiting: this.waiters.size }
  }

  /** Checkouts are served (the pool is open, or winding down): read on every checkout, so a field. */
  serving = true
  /** Closed for good: what is still open is being closed. */
  get shut (): boolean { return this.#life === 'closed' }
  /** Every connection, in the order they were opened. */
  conns (): IterableIterator<Conn> { return this.#all.values() }

  /** The one place a connection changes state, with everything the change implies (the table above). */
  move (conn: Conn, next: ConnState, reason: DestroyReason = 'error'): void {
    const prev = conn.state
    if (prev === 'closed') return
    conn.state = next
    switch (next) {
      case 'opening':
        this.#all.add(conn)
        break
      case 'checking':
        if (prev === 'opening') this.#opened(conn)
        break
      case 'lent':
        // A new checkout: nothing it sends has touched the session yet, nor been cancelled.
        conn.dirty = false
        conn.cancelled = false
        conn.uses++
        if (this.#opts.allowExitOnIdle) holdProcess(conn.client, true)
        break
      case 'returning':
        conn.lease = undefined
        this.#returns.record()
        break
      case 'idle':
        conn.idleSince = performance.now()
        if (this.#opts.allowExitOnIdle) holdProcess(conn.client, false)
        this.#idle.push(conn)
        this.#pulse()
        break
      case 'closed':
        this.#close(conn, prev, reason)
        break
    }
  }

  /**
   * Puts a connection back in the pool (`idle`), or closes it if it must not be reused. Callers
   * have ruled out a failed connection (a checkout gives back only what it just took or opened).
   */
  putBack (conn: Conn): void {
    if (!this.serving) return this.move(conn, 'closed', 'close')
    if (!this.#opts.pooling) return this.move(conn, 'closed', 'unpooled')
    if (conn.uses >= this.#opts.maxUses) return this.move(conn, 'closed', 'uses')
    if (conn.fate !== undefined) return this.move(conn, 'closed', conn.fate)
    this.move(conn, 'idle')
  }

  /** An idle connection, a free slot being opened, or a place in the queue; waiting checkouts go first. */
  take (deadline: number, signal: CheckoutSignal | undefined, log: FastifyBaseLogger): Conn | Promise<Conn> {
    if (!this.serving) throw this.closedError()
    if (this.waiters.size === 0) {
      const conn = this.#idle.pop()
      if (conn !== undefined) return this.#claim(conn)
      if (this.#all.size < this.#opts.max) return this.#hooks.open(deadline, log)
    }
    if (signal?.aborted === true) throw signal.reason
    if (this.waiters.size >= this.#opts.maxWaiting) {
      this.#counters.queueFull++
      throw withRetryAfter(new PgQueueFullError(this.#opts.maxWaiting), this.retryAfter())
    }
    return this.waiters.wait(deadline, signal, log)
  }

  /** Closes idle connections `doomed` says must go. */
  closeIdle (doomed: (conn: Conn) => boolean, reason: DestroyReason): void {
    for (const conn of this.#idle.slice()) {
      if (doomed(conn)) this.move(conn, 'closed', reason)
    }
  }

  /**
   * The app is shutting down (Fastify's preClose): from now on, connections have
   * `closeTimeoutMs` to come back; after that they are closed, running statements and all.
   * Requests still being served may go on checking out until then.
   */
  windDown (): void {
    if (this.#life !== 'open') return
    this.#live('winding down')
    this.#closeTimer = setTimeout(() => this.#shut(), this.#opts.closeTimeoutMs).unref()
  }

  /** No more checkouts: the waiting ones fail, idle connections close, lent ones are waited for. */
  close (): Promise<void> {
    this.windDown()
    if (this.#life === 'winding down') {
      this.#live('closing')
      this.waiters.rejectAll(() => this.closedError())
      for (const conn of [...this.#idle]) this.move(conn, 'closed', 'close')
      if (this.#all.size === 0) this.#shut()
    }
    return this.#closed
  }

  /** Seconds until a checkout arriving now would likely be served: the `Retry-After` of 503s. */
  retryAfter (): number {
    return this.#returns.retryAfterSeconds(this.waiters.size, this.#opts.acquireTimeoutMs)
  }

  closedError (): Error {
    return withRetryAfter(new PgPoolClosedError(), 1)
  }

  #live (life: Life): void {
    this.#life = life
    this.serving = life === 'open' || life === 'winding down'
  }

  /** Marks a connection taken from the idle stack, before anything else can see it. */
  #claim (conn: Conn): Conn {
    this.move(conn, 'checking')
    return conn
  }

  /** Hands free connections, or free slots, to waiting checkouts in arrival order. */
  #pulse (): void {
    while (this.waiters.size > 0 && this.serving) {
      const conn = this.#idle.pop()
      if (conn === undefined && this.#all.size >= this.#opts.max) return
      const waiter = this.waiters.next()
      waiter.resolve(conn === undefined ? this.#hooks.open(waiter.deadline, waiter.log) : this.#claim(conn))
    }
  }

  #opened (conn: Conn): void {
    this.#counters.created++
    const { maxLifetimeMs, maxLifetimeJitter } = this.#opts
    if (!Number.isFinite(maxLifetimeMs)) return
    // Each connection gets its own lifetime, so a pool opened at once is not renewed at once.
    const lifetime = maxLifetimeMs * (1 - Math.random() * maxLifetimeJitter)
    conn.lifetime = setTimeout(() => {
      // Closed now if idle, else when it comes back.
      conn.condemn('lifetime')
      if (conn.state === 'idle') this.move(conn, 'closed', 'lifetime')
    }, lifetime).unref()
  }

  #close (conn: Conn, prev: ConnState, reason: DestroyReason): void {
    if (prev === 'idle') this.#idle.splice(this.#idle.indexOf(conn), 1)
    clearTimeout(conn.lifetime)
    this.#all.delete(conn)
    // (One that never opened is a connect failure, counted as such.)
    if (prev !== 'opening') {
      this.#counters.destroyed[reason]++
      tell(this.#owner, this.#log, 'remove', conn.client)
      if (channels.destroy.hasSubscribers) {
        channels.destroy.publish({ pool: this.#owner, reason, ageMs: performance.now() - conn.createdAt, uses: conn.uses })
      }
    }
    this.#log.debug({ reason }, 'fastify-pg-pool: connection closed')
    conn.end(prev === 'opening')
    if (this.#life === 'closing' && this.#all.size === 0) this.#shut()
    this.#pulse()
  }

  /** The end: everything still open is closed. */
  #shut (): void {
    if (this.#life === 'closed') return
    this.#live('closed')
    clearTimeout(this.#closeTimer)
    clearInterval(this.#housekeeper)
    this.waiters.rejectAll(() => this.closedError())
    const inUse = [...this.#all].filter((conn) => conn.state !== 'idle')
    for (const conn of inUse) {
      if (conn.lease !== undefined) {
        this.#log.warn({ heldMs: Math.round(performance.now() - conn.lease.since) }, 'fastify-pg-pool: closeTimeoutMs passed; cancelling and destroying a connection still checked out')
      }
    }
    this.#hooks.shut(inUse).finally(() => {
      for (const conn of this.#all) this.move(conn, 'closed', 'close')
      this.#onClosed()
    }).catch(noop)
  }

  /** Closes idle connections past `idleTimeoutMillis`, down to `min`. */
  #sweep (): void {
    const now = performance.now()
    const { idleTimeoutMs, min } = this.#opts
    // The bottom of the stack idled longest.
    for (const conn of this.#idle.slice()) {
      if (this.#all.size <= min || now - conn.idleSince < idleTimeoutMs) return
      this.move(conn, 'closed', 'idle')
    }
  }
}

type ConnState = Conn['state']
