import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { Conn, Lease } from './conn.js'
import { roundTrip } from './deadline.js'
import { channels, WindowHistogram } from './metrics.js'
import type { ResolvedOptions } from './options.js'
import { busy } from './pg-internals.js'
import type { Slots } from './slots.js'

/**
 * The return policy: what happens when a connection comes back from its holder, in order, each
 * step coming back to `#next` when it completes:
 *
 * 1. failed (`conn.fate`), or pooling is off → closed (closing ends its transaction, its running
 *    statement and its session: nothing to clean);
 * 2. a statement still running → wait for it to settle (pg's 'drain', or the socket's end);
 * 3. a transaction open or failed → ROLLBACK;
 * 4. session state left (`sessionReset`) → DISCARD ALL;
 * 5. back to the pool (`Slots.putBack`: idle, or closed past `maxUses` or its lifetime).
 *
 * A cleaning step that fails or outlasts `pingTimeoutMs` condemns the connection (step 1).
 */
export class Checkin {
  readonly #opts: ResolvedOptions
  readonly #log: FastifyBaseLogger
  readonly #slots: Slots
  readonly #owner: object
  readonly holds = new WindowHistogram()

  constructor (owner: object, opts: ResolvedOptions, log: FastifyBaseLogger, slots: Slots) {
    this.#owner = owner
    this.#opts = opts
    this.#log = log
    this.#slots = slots
  }

  /** Takes back a connection its holder let go. A second call for the same checkout does nothing. */
  release (conn: Conn): void {
    if (conn.state !== 'lent') return
    const now = performance.now()
    const lease = conn.lease as Lease
    this.holds.record(now - lease.since, now)
    if (channels.release.hasSubscribers) channels.release.publish({ pool: this.#owner, requestId: lease.holder?.id, holdMs: now - lease.since })
    this.#slots.move(conn, 'returning')
    // Whether its session is reset on the way back (see sessionReset), decided once.
    const { sessionReset } = this.#opts
    conn.dirty = sessionReset === 'always' || (sessionReset === 'auto' && conn.dirty)
    this.#next(conn)
  }

  #next (conn: Conn): void {
    if (conn.state !== 'returning') return // closed meanwhile (the pool closed)
    if (conn.fate === 'error') return this.#slots.move(conn, 'closed', 'error')
    if (!this.#opts.pooling) return this.#slots.move(conn, 'closed', 'unpooled')
    if (busy(conn.client)) return this.#whenSettled(conn)
    const tx = conn.client.getTransactionStatus()
    if (tx === 'T' || tx === 'E') return this.#step(conn, 'ROLLBACK')
    if (conn.dirty) return this.#step(conn, 'DISCARD ALL')
    this.#slots.putBack(conn)
  }

  /** One statement on the way back, bounded by `pingTimeoutMs`. */
  #step (conn: Conn, sql: 'ROLLBACK' | 'DISCARD ALL'): void {
    roundTrip(conn.client, sql, this.#opts.pingTimeoutMs).then(
      () => {
        if (sql === 'DISCARD ALL') conn.sessionReset()
        this.#next(conn)
      },
      (error: unknown) => {
        this.#log.debug({ err: error, sql }, 'fastify-pg-pool: could not clean the connection on return; destroying it')
        conn.condemn('error')
        this.#next(conn)
      }
    )
  }

  /** Comes back to `#next` once pg has settled everything it was handed, or the socket ended. */
  #whenSettled (conn: Conn): void {
    const { client } = conn
    const done = (): void => {
      client.off('drain', done)
      client.off('end', done)
      this.#next(conn)
    }
    client.on('drain', done)
    client.on('end', done)
  }
}
