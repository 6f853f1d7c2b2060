import { performance } from 'node:perf_hooks'
import type { Client } from 'pg'
import { isConnectionError, isReadTimeout } from './errors.js'

/** Why a connection left the pool for good. */
export type DestroyReason = 'error' | 'ping' | 'suspect' | 'idle' | 'lifetime' | 'uses' | 'close' | 'unpooled'

/** The request (or job) holding a connection: read only to name its route in a diagnosis. */
export interface Holder { id?: string, method: string, url?: string, routeOptions: { url?: string | undefined } }

/** Where a connection is: a connection is in exactly one of these. */
type ConnState = 'opening' | 'idle' | 'checking' | 'lent' | 'returning' | 'gone'

/** pg's Client has ref()/unref() (for `allowExitOnIdle`); its type declarations miss them. */
type RefableClient = Client & { ref (): void, unref (): void }

/** One physical connection and what the pool knows about it. */
export class Conn {
  readonly client: Client
  readonly createdAt = performance.now()
  state: ConnState = 'opening'
  /** When it last went idle: decides whether it is pinged. */
  idleSince = this.createdAt
  /** When it was last handed out, and to whom. */
  lentAt = 0
  holder: Holder | undefined = undefined
  /** Where the current checkout was asked for (leak detection on). */
  origin: Error | undefined = undefined
  /** The current checkout was reported as held past `leakDetectionMs`. */
  leaked = false
  /** Pings the current checkout sent before it got this connection. */
  pinged = 0
  uses = 0
  /** A query was sent and the client has not emitted 'drain' since. */
  busy = false
  /** The socket died or a connection-class error was seen: never reuse. */
  broken = false
  /**
   * A statement of this checkout may have changed session state (SET, LISTEN, ...): reset it on
   * return, and never retry a statement of this checkout on a fresh connection, which would lack it.
   */
  dirty = false
  /** Past its lifetime: closed as soon as it is not in use. */
  expired = false
  lifetime: NodeJS.Timeout | undefined

  readonly #onLost: (conn: Conn) => void

  /** `onLost` hears of the first sign that the connection died under us. */
  constructor (client: Client, onLost: (conn: Conn) => void) {
    this.client = client
    this.#onLost = onLost
  }

  /** The session is over (its socket closed, or the server said FATAL): nothing sent on it runs. */
  dead = false

  /** The connection died (its socket closed, or a connection-class error). */
  lost (): void {
    this.dead = true
    if (this.broken) return
    this.broken = true
    this.#onLost(this)
  }

  /** Lets the process exit while this connection is idle (`allowExitOnIdle`), or not. */
  holdProcess (hold: boolean): void {
    const client = this.client as RefableClient
    if (hold) client.ref()
    else client.unref()
  }

  /**
   * After DISCARD ALL: the server dropped this session's prepared statements, so pg's record of
   * which names it prepared on this connection must be emptied too, or named queries would fail.
   */
  sessionReset (): void {
    this.dirty = false
    const connection = (this.client as unknown as { connection: { parsedStatements: object, submittedNamedStatements: object } }).connection
    connection.parsedStatements = {}
    connection.submittedNamedStatements = {}
  }

  /**
   * pg has not read the server's ReadyForQuery for everything it was handed: a statement that
   * failed is reported at its ErrorResponse, before the ReadyForQuery that carries the new
   * transaction status, and a `connection()` client may have statements running or queued. The
   * status pg reports now is not the one the next statement will meet; 'drain' says when it is.
   */
  unsettled (): boolean {
    const client = this.client as unknown as { readyForQuery: boolean, _activeQuery: unknown, _queryQueue: unknown[] }
    return !client.readyForQuery || client._activeQuery != null || client._queryQueue.length > 0
  }

  /** Records a query error; a connection-class one condemns the connection. */
  failed (error: unknown): void {
    if (isConnectionError(error)) this.lost()
    else if (isReadTimeout(error)) this.broken = true
  }
}
