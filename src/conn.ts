import { performance } from 'node:perf_hooks'
import type { Client } from 'pg'
import { isConnectionError } from './errors.js'
import { noop } from './deadline.js'
import { NAMED } from './identity.js'
import { destroySocket, doubtStatements, forgetPrepared, isReadTimeout } from './pg-internals.js'
import type { Statements } from './prepare.js'

/** Why a connection left the pool for good. */
export type DestroyReason = 'error' | 'ping' | 'suspect' | 'idle' | 'lifetime' | 'uses' | 'close' | 'unpooled' | 'stuck'

/** The request (or job) holding a connection: read only to name its route in a diagnosis. */
export interface Holder { id?: string, method: string, url?: string, routeOptions: { url?: string | undefined } }

/** Where a connection is; `move()` in slots.ts is the only writer, and its table says what each change does. */
export type ConnState = 'opening' | 'checking' | 'idle' | 'lent' | 'returning' | 'closed'

/** One checkout of a connection: who has it, since when. */
export interface Lease {
  readonly holder: Holder | undefined
  /** Where it was asked for (leak detection on). */
  readonly origin: Error | undefined
  readonly since: number
  /** Pings this checkout sent before it got the connection. */
  readonly pings: number
  /** Reported as held past `leakDetectionMs`. */
  leaked: boolean
}

/** One physical connection and what the pool knows about it. */
export class Conn {
  readonly client: Client
  readonly createdAt = performance.now()
  state: ConnState = 'opening'
  /** When it last went idle: decides whether it is pinged. */
  idleSince = this.createdAt
  /** The checkout holding it, while `lent`. */
  lease: Lease | undefined = undefined
  uses = 0
  /**
   * Why it will be closed instead of pooled when it comes back (or now, if idle): it failed
   * (`error`: its socket died, a connection-class error, a read timeout, `release(err)`), or
   * it is past its lifetime. Set once; a failure overrides a lifetime.
   */
  fate: DestroyReason | undefined = undefined
  /** The session is over (its socket closed, or the server said FATAL): nothing sent on it runs. */
  dead = false
  /**
   * pg gave up waiting for a statement's answer (`query_timeout`): what is sent now would wait
   * behind it. The server may still run it: it is cancelled when the connection comes back.
   */
  stuck = false
  /**
   * A statement of this checkout may have changed session state (SET, LISTEN, ...): reset it on
   * return, and never retry a statement of this checkout on a fresh connection, which would lack it.
   */
  dirty = false
  lifetime: NodeJS.Timeout | undefined = undefined
  /**
   * The plugin cancelled what ran on it in this checkout (a 57014 is then the plugin's doing), and
   * no round trip has confirmed since that the cancel cannot land on a later statement.
   */
  cancelled = false

  /** The statements the plugin prepared on it (see prepare.ts), once it prepared one. */
  statements: Statements | undefined = undefined

  readonly #onLost: (conn: Conn, error: Error | undefined) => void

  /** `onLost` hears of the first sign that the connection died under us (with pg's error, if it gave one). */
  constructor (client: Client, onLost: (conn: Conn, error: Error | undefined) => void) {
    this.client = client
    this.#onLost = onLost
  }

  /** It must not be pooled again. */
  condemn (reason: DestroyReason): void {
    if (this.fate !== 'error') this.fate = reason
  }

  /** The connection died (its socket closed, or a connection-class error). */
  lost (error?: Error): void {
    this.dead = true
    // (Not heard for a connection the pool closed itself, nor twice.)
    if (this.fate === 'error' || this.state === 'closed') return
    this.fate = 'error'
    this.#onLost(this, error)
  }

  /** Records a query error; a connection-class one condemns the connection. */
  failed (error: unknown): void {
    if (isConnectionError(error)) this.lost()
    else if (isReadTimeout(error)) {
      this.stuck = true
      this.condemn('error')
    }
  }

  /**
   * A DEALLOCATE or DISCARD went by (the user's): the statements the plugin prepared may be gone,
   * or not (it may yet fail). Each is closed and prepared again before its next use.
   */
  preparedInDoubt (): void {
    this.statements?.doubt()
    doubtStatements(this.client, NAMED)
  }

  /** After DISCARD ALL: nothing of the last checkout's session is left. */
  sessionReset (): void {
    this.dirty = false
    this.statements?.clear()
    forgetPrepared(this.client)
  }

  /**
   * Ends the client: gracefully on a healthy idle socket, at once on one dead or mid-statement,
   * or still connecting (`connecting`).
   */
  end (connecting: boolean): void {
    if (connecting) destroySocket(this.client)
    else this.client.end().catch(noop)
  }
}
