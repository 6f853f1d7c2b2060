import type { EventEmitter } from 'node:events'
import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { Client } from 'pg'
import type { Conn, Lease } from './conn.js'
import { noop, roundTrip, withTimeout } from './deadline.js'
import { channels, WindowHistogram, type PoolCounters } from './metrics.js'
import type { ResolvedOptions } from './options.js'
import { busy, cancelRequest, settling } from './pg-internals.js'
import type { Slots } from './slots.js'
import { tell } from './pool-contract.js'

/**
 * The return policy: what happens when a connection comes back from its holder, in order, each
 * step coming back to `#next` when it completes:
 *
 * 1. a statement still running (its holder left: an aborted request, a released client) →
 *    cancelled (CancelRequest); if it has not stopped within `cancelGraceMs` (a blackholed
 *    socket, a backend that does not answer) → closed; one that failed, whose ReadyForQuery is
 *    still to come → waited for (`pingTimeoutMs`), not cancelled;
 * 2. failed (`conn.fate`), or pooling is off → closed (closing ends its transaction and its
 *    session: nothing to clean);
 * 3. a transaction open or failed → ROLLBACK;
 * 4. session state left (`sessionReset`) → DISCARD ALL, then `onConnect` again;
 * 5. after a cancel, if neither ran: one empty round trip (a late cancel lands on it, not on
 *    the next holder's statement);
 * 6. back to the pool (`Slots.putBack`: idle, or closed past `maxUses` or its lifetime).
 *
 * A cleaning step that fails or outlasts `pingTimeoutMs` condemns the connection (step 2).
 */
export class Checkin {
  readonly #opts: ResolvedOptions
  readonly #log: FastifyBaseLogger
  readonly #slots: Slots
  readonly #counters: PoolCounters
  readonly #owner: EventEmitter
  readonly holds = new WindowHistogram()

  constructor (owner: EventEmitter, opts: ResolvedOptions, log: FastifyBaseLogger, slots: Slots, counters: PoolCounters) {
    this.#owner = owner
    this.#opts = opts
    this.#log = log
    this.#slots = slots
    this.#counters = counters
  }

  /**
   * Takes back a connection its holder let go (`error`: what a client's `release(err)` was
   * given, for pg-pool's 'release' event). A second call for the same checkout does nothing.
   */
  release (conn: Conn, error?: unknown): void {
    if (conn.state !== 'lent') return
    const now = performance.now()
    const lease = conn.lease as Lease
    this.holds.record(now - lease.since, now)
    if (channels.release.hasSubscribers) channels.release.publish({ pool: this.#owner, requestId: lease.holder?.id, holdMs: now - lease.since })
    this.#slots.move(conn, 'returning')
    tell(this.#owner, this.#log, 'release', error, conn.client)
    // Whether its session is reset on the way back (see sessionReset), decided once.
    const { sessionReset } = this.#opts
    conn.dirty = sessionReset === 'always' || (sessionReset === 'auto' && conn.dirty)
    this.#next(conn)
  }

  #next (conn: Conn): void {
    if (conn.state !== 'returning') return // closed meanwhile (the pool closed)
    if (busy(conn.client) && !conn.dead && !conn.cancelled) {
      // A statement that failed just now has nothing left to cancel: its ReadyForQuery is on the way.
      const settled = settling(conn.client) ? drained(conn.client, this.#opts.pingTimeoutMs) : this.cancel(conn)
      settled.then((ok) => ok ? this.#next(conn) : this.#slots.move(conn, 'closed', 'stuck'), noop)
      return
    }
    if (conn.fate === 'error') return this.#slots.move(conn, 'closed', 'error')
    if (!this.#opts.pooling) return this.#slots.move(conn, 'closed', 'unpooled')
    const tx = conn.client.getTransactionStatus()
    if (tx === 'T' || tx === 'E') return this.#step(conn, 'ROLLBACK')
    if (conn.dirty) return this.#step(conn, 'DISCARD ALL')
    if (conn.cancelled) return this.#step(conn, '')
    this.#slots.putBack(conn)
  }

  /**
   * One statement on the way back, bounded by `pingTimeoutMs`. After DISCARD ALL the session is
   * as new: `onConnect` runs again, so what it set (a search_path, a LISTEN) holds for every holder.
   */
  #step (conn: Conn, sql: 'ROLLBACK' | 'DISCARD ALL' | ''): void {
    const { onConnect, pingTimeoutMs } = this.#opts
    let step = roundTrip(conn.client, sql, pingTimeoutMs)
    if (sql === 'DISCARD ALL') {
      step = step.then(() => {
        // (Before onConnect: what it prepares again must be known to pg as prepared.)
        conn.sessionReset()
        if (onConnect !== undefined) return withTimeout(onConnect(conn.client), pingTimeoutMs)
      })
    }
    step.then(
      () => {
        // (A late cancel would have landed on this round trip: none can reach the next holder.)
        conn.cancelled = false
        this.#next(conn)
      },
      (error: unknown) => {
        this.#log.debug({ err: error, sql }, 'fastify-pg-pool: could not clean the connection on return; destroying it')
        conn.condemn('error')
        this.#next(conn)
      }
    )
  }

  /**
   * Cancels what runs on `conn` (CancelRequest), and waits until pg has settled everything it
   * was handed and the server has taken the cancel, for at most `cancelGraceMs`. True when both
   * happened in time; false otherwise (the connection must then be closed).
   */
  async cancel (conn: Conn): Promise<boolean> {
    const started = performance.now()
    const grace = this.#opts.cancelGraceMs
    this.#counters.cancels++
    conn.cancelled = true
    // Two things to wait for, in either order: pg settled, and the server took the cancel (one
    // that could not be sent decides at once). Each is bounded by the grace.
    const stopped = drained(conn.client, grace)
    let error: unknown
    const ok = await cancelRequest(conn.client, this.#opts.client.stream, grace).then(() => stopped, (e: unknown) => {
      error = e
      return false
    })
    if (ok) this.#counters.cancelsSettled++
    else this.#log.debug({ err: error }, 'fastify-pg-pool: a cancelled statement did not stop within cancelGraceMs; destroying its connection')
    if (channels.cancel.hasSubscribers) channels.cancel.publish({ pool: this.#owner, settled: ok, durationMs: performance.now() - started, error })
    return ok
  }
}

/** Resolves true when pg has settled everything it was handed ('drain', or the client ended), false after `ms`. */
async function drained (client: Client, ms: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const done = (ok: boolean): void => {
      clearTimeout(timer)
      client.off('drain', settle)
      client.off('end', settle)
      resolve(ok)
    }
    const settle = (): void => done(true)
    const timer = setTimeout(() => done(false), ms)
    client.on('drain', settle)
    client.on('end', settle)
  })
}
