import pg, { type Client } from 'pg'

/**
 * Everything the plugin knows of pg that pg does not publish, in one file: a pg upgrade has this
 * file to audit, and test/pg-internals.test.ts pins each assumption against the pg installed.
 * (pg-pool does the same from inside pg, with `TODO(bmc): expose a proper, public interface`.)
 *
 * | assumption | used for |
 * | --- | --- |
 * | `client.readyForQuery`, `_activeQuery`, `_queryQueue` (`_sentQueryQueue` when pipelining) | `busy()`: is a statement running or queued? `settling()`: or did one just fail? |
 * | `client` emits 'drain' when the last of them settles | waiting for a running statement |
 * | `client.connection.parsedStatements` / `submittedNamedStatements` | forgetting prepared statements after DISCARD ALL, DEALLOCATE or a Close; the Query subclass |
| `client.connection.stream` is the socket | closing a client still connecting |
 * | `pg.Query`, its `submit` and `handle*` methods, `requiresPreparation()`, `queryMode` | statements sent in front of a statement (PrefixedQuery) |
 * | `query._canceledDueToError`: reported at ReadyForQuery instead of the result | a statement in front that answered what it must not |
 * | `connection.query/parse/bind/execute` write one message each | the same |
 * | a query not yet sent waits in `client._queryQueue` | closing cursors when a checkout ends |
 * | `client.ref()` / `unref()` | `allowExitOnIdle` |
| `client.host/port/ssl/sslNegotiation/processID/secretKey`, `pg.Connection` and its `cancel` | the CancelRequest of a statement whose holder left |
 * | `client.connectionParameters` | the parameters read from a connection string (PgBouncer refuses some) |
 * | the texts of pg's own errors (below) | telling a lost connection, a refused query and a timeout apart |
 */

/** pg's wire connection, as the Query subclass drives it. */
export interface Connection {
  query (text: string): void
  parse (msg: { text: string, name?: string | undefined }): void
  bind (msg: object): void
  execute (msg: object): void
  /** Close of a prepared statement; pg ignores the server's CloseComplete. */
  close (msg: { type: 'S', name: string }): void
  parsedStatements: Record<string, string>
  submittedNamedStatements: Record<string, string>
  /** The socket (a stream without `cork` is written message by message). */
  stream: { cork?: () => void, uncork?: () => void }
}

/** pg's Query, the members the subclass reads or overrides. */
export interface PgQuery {
  text: string | undefined
  queryMode: string | undefined
  name: string | undefined
  values: unknown
  requiresPreparation (): boolean
  submit (connection: Connection): Error | null
  handleRowDescription (msg: unknown): void
  handleDataRow (msg: unknown): void
  handleCommandComplete (msg: unknown, connection: Connection): void
  handleError (error: Error, connection: Connection): void
  /** An error found on the client side: pg reports it at ReadyForQuery, instead of the result. */
  _canceledDueToError: Error | false
}

/** A row as a statement in front must answer it. */
function answered (fields: unknown[], row: ReadonlyArray<string | undefined>): boolean {
  return fields.length === row.length && row.every((value, i) => value === undefined || fields[i] === value)
}

/** What PrefixedQuery records, in pg's `parsedStatements`, for a statement the server may or may not have. */
const IN_DOUBT = ''

/** A statement sent in front of another (PrefixedQuery): a text, or a text and its parameters (all strings). */
export type Prefix = string | {
  readonly text: string
  readonly values: readonly string[]
  readonly name?: string | undefined
  /**
   * The row it must answer (a column `undefined`: any value), with the error to report when it
   * does not: the statement behind it then fails, and the name is prepared again.
   */
  readonly answers?: { readonly row: ReadonlyArray<string | undefined>, readonly otherwise: () => Error } | undefined
}

/** pg's Query class (exported by pg, undeclared in @types/pg). */
export const Query = (pg as unknown as { Query: new (...args: unknown[]) => PgQuery }).Query

interface ClientInternals {
  readyForQuery: boolean
  _activeQuery: unknown
  _queryQueue: unknown[]
  _sentQueryQueue: unknown[]
  connection: Connection & { stream: { destroy (error?: Error): void, listenerCount (event: string): number } }
  ref (): void
  unref (): void
}

const internals = (client: Client): ClientInternals => client as unknown as ClientInternals

/**
 * pg has not read the server's ReadyForQuery for everything it was handed: a statement is
 * running or queued (a suspended cursor counts), or one failed and its ReadyForQuery is still to
 * come (pg reports a failure at ErrorResponse, before the status it leaves). The transaction
 * status pg reports now is not the one the next statement will meet; 'drain' says when it is.
 */
export function busy (client: Client): boolean {
  const c = internals(client)
  return !c.readyForQuery || c._activeQuery != null || c._queryQueue.length > 0 || c._sentQueryQueue.length > 0
}

/** What pg will connect with: the config merged with what it read from the connection string and PG* variables. */
export function connectionParameters (client: Client): Record<string, unknown> {
  return (client as unknown as { connectionParameters: Record<string, unknown> }).connectionParameters
}

/**
 * Busy, but nothing runs: a statement failed (pg has called back) and only its ReadyForQuery is
 * still to come. Nothing to cancel; 'drain' comes with it.
 */
export function settling (client: Client): boolean {
  const c = internals(client)
  return !c.readyForQuery && c._activeQuery == null && c._queryQueue.length === 0 && c._sentQueryQueue.length === 0
}

/**
 * Closes a client still connecting, at once: its `connect()` rejects. (`end()` would half-close
 * and leave it connecting until its connect timeout, and stop pg from ever settling it.)
 */
export function destroySocket (client: Client): void {
  const { stream } = internals(client).connection
  // A socket pg never started on (a `Client` whose connect failed before pg's) has nobody to
  // hear an error: it is destroyed without one.
  if (stream.listenerCount('error') === 0) stream.destroy()
  else stream.destroy(new Error('closed while connecting: the pool closed or the checkout gave up'))
}

/** After DISCARD ALL: the server dropped the session's prepared statements; pg must forget them too. */
export function forgetPrepared (client: Client): void {
  const { connection } = internals(client)
  connection.parsedStatements = {}
  connection.submittedNamedStatements = {}
}

/** The server dropped these statements (or is about to: a Close), or never had them: pg must prepare them again. */
export function forgetStatements (client: Client, names: string[]): void {
  const { connection } = internals(client)
  for (const name of names) {
    delete connection.parsedStatements[name]
    delete connection.submittedNamedStatements[name]
  }
}

/**
 * The server may have dropped these (a DEALLOCATE or DISCARD went by): PrefixedQuery closes and
 * prepares again each of them, in front of the next statement that uses it.
 */
export function doubtStatements (client: Client, startingWith: string): void {
  const { connection } = internals(client)
  for (const known of [connection.parsedStatements, connection.submittedNamedStatements]) {
    for (const name of Object.keys(known)) {
      if (!name.startsWith(startingWith)) continue
      delete connection.submittedNamedStatements[name]
      connection.parsedStatements[name] = IN_DOUBT
    }
  }
}

/** Statements handed to pg wait behind the one running (not yet written). */
export function waiting (client: Client): boolean {
  return internals(client)._queryQueue.length > 0
}

/** Lets the process exit while this client's socket is open (`allowExitOnIdle`), or not. */
export function holdProcess (client: Client, hold: boolean): void {
  if (hold) internals(client).ref()
  else internals(client).unref()
}

/** A cursor or stream passed to `client.query()` (pg-cursor, pg-query-stream, ...). */
export interface Submittable {
  submit (...args: unknown[]): unknown
  destroy?: (error?: Error) => unknown
  close?: (callback: () => void) => unknown
  /** pg's way of failing a query that has not run: `handleError(error)` (typed loosely by its libraries). */
  handleError?: unknown
  on?: (event: 'error', listener: () => void) => unknown
  listenerCount?: (event: 'error') => number
}

/** Still waiting in pg's queue behind another query: not submitted, so it cannot be closed. */
export function queued (client: Client, submittable: Submittable): boolean {
  return internals(client)._queryQueue.includes(submittable)
}

/** Takes a submittable pg has not sent out of its queue: it is never sent. */
export function unqueue (client: Client, submittable: Submittable): void {
  const queue = internals(client)._queryQueue
  queue.splice(queue.indexOf(submittable), 1)
}

/** A pg-cursor's reads waiting for rows. */
interface PendingReads { _cb: ((error: Error) => void) | null, _queue: Array<[number, (error: Error) => void]> }

/**
 * Fails the reads a cursor has pending: `close()` on a cursor whose statement runs drops them
 * without a call (pg-cursor marks itself done, and ignores the error the cancel brings), and
 * whoever awaits them would wait forever.
 */
export function failReads (submittable: Submittable, error: Error): void {
  const cursor = submittable as Partial<PendingReads>
  if (cursor._cb === undefined) return // not a pg-cursor: a cursor class of the user's
  const waiting = [cursor._cb, ...(cursor as PendingReads)._queue.splice(0).map(([, callback]) => callback)]
  cursor._cb = null
  for (const callback of waiting) callback?.(error)
}

interface Protocol {
  connect (port: number | string, host?: string): void
  requestSsl (): void
  cancel (processID: number, secretKey: number): void
  end (): void
  stream: { destroy (): void }
  on (event: string, listener: (...args: any[]) => void): void
}

/** pg's protocol connection class (exported by pg, undeclared in @types/pg). */
const ProtocolConnection = (pg as unknown as { Connection: new (config: object) => Protocol }).Connection

interface Address {
  host: string
  port: number | string
  ssl: unknown
  sslNegotiation: string
  processID: number | null
  secretKey: number | null
}

/**
 * PostgreSQL's CancelRequest for whatever `client`'s backend is running: a connection of its own
 * to the same place (host or socket, port, TLS as the client negotiated it, the user's `stream`),
 * carrying the backend's pid and secret key; the server closes it without an answer. Resolves
 * when the server closed it (the cancel was delivered: the statement, if still running, ends
 * with SQLSTATE 57014), rejects on an error or after `timeoutMs`. PgBouncer forwards it.
 */
export function cancelRequest (client: Client, stream: unknown, timeoutMs: number): Promise<void> {
  const { host, port, ssl, sslNegotiation, processID, secretKey } = client as unknown as Address
  return new Promise((resolve, reject) => {
    /* c8 ignore next -- a client is only cancelled once it is connected */
    if (processID === null || secretKey === null) return resolve()
    const con = new ProtocolConnection({ stream, ssl, sslNegotiation })
    const timer = setTimeout(() => {
      con.stream.destroy()
      reject(new Error(`no answer to the cancel within ${timeoutMs} ms`))
    }, timeoutMs).unref()
    const send = (): void => con.cancel(processID, secretKey)
    con.on('connect', () => {
      if (!ssl) send()
      else if (sslNegotiation !== 'direct') con.requestSsl()
    })
    con.on('sslconnect', send)
    con.on('end', () => {
      clearTimeout(timer)
      resolve()
    })
    con.on('error', (error: Error) => {
      clearTimeout(timer)
      con.stream.destroy()
      reject(error)
    })
    if (host.startsWith('/')) con.connect(`${host}/.s.PGSQL.${port}`)
    else con.connect(port, host)
  })
}

/** pg's words for a client that refused a query without writing it. */
const NOT_SENT = ['Client has encountered a connection error and is not queryable', 'Client was closed and is not queryable']

/** pg refused the query without writing it: the connection was already gone. */
export const refusedUnsent = (message: string): boolean => NOT_SENT.some((m) => message.startsWith(m))

/** pg's words for a connection that ended under a query, or refused one unsent. */
export const saysLost = (message: string): boolean => message.startsWith('Connection terminated') || refusedUnsent(message)

/** pg's `query_timeout` fired ("Query read timeout"). */
export const isReadTimeout = (error: unknown): boolean => error instanceof Error && error.message === 'Query read timeout'

/** pg's `connectionTimeoutMillis` fired during connect ("timeout expired"). */
export const isConnectTimeout = (error: unknown): boolean => error instanceof Error && error.message === 'timeout expired'

/**
 * pg's Query with statements sent in front of it, in the same message batch and the same
 * transaction: a statement timeout (`set_config('statement_timeout', ms, true)`, which leaves
 * nothing on the session: what works behind PgBouncer in transaction mode) and a transaction's
 * BEGIN riding with its first statement. One round trip for all of them.
 *
 * - simple protocol (no parameters): one Query message with every statement; PostgreSQL runs
 *   them as one implicit transaction (an explicit one from a BEGIN on).
 * - extended protocol (parameters, names, row limits): Parse/Bind/Execute of each statement in
 *   front, then the statement's own messages and one Sync: a failure skips what follows.
 *
 * The results of the statements in front (a row, a command) are dropped, so the caller sees the
 * result it would have seen without them. `passed`: how many of them completed (when the
 * statement fails, whether its BEGIN ran).
 */
export class PrefixedQuery extends Query {
  readonly #prefix: readonly Prefix[]
  /** Statements in front whose results have been consumed. */
  passed = 0
  /** Characters in front of the statement's own text (simple protocol): error positions are moved back. */
  #shift = 0
  /**
   * A statement's name, hidden from pg while those in front are answered: pg records a name as
   * prepared on the first ParseComplete it sees, which is theirs.
   */
  #name: string | undefined

  /** pg reads a statement's own `query_timeout` from the object it is given. */
  readonly query_timeout: number | undefined

  /** Prepared statements closed on the server ahead of everything (Close messages): no answer to wait for, no error if gone. */
  readonly #close: readonly string[]

  constructor (prefix: readonly Prefix[], config: unknown, values: unknown, callback: (error: Error | null, result?: any) => void, close: readonly string[] = []) {
    super(config, values, callback)
    this.#prefix = prefix
    this.#close = close
    this.query_timeout = (config as { query_timeout?: number } | null)?.query_timeout
    // Parameters in front travel in the extended protocol only: the statement goes that way too.
    if (prefix.some((p) => typeof p !== 'string')) this.queryMode = 'extended'
  }

  /** pg refused the statement unsent: nothing in front was sent either. */
  #refusedUnsent = false

  /** The statement in front answering now did not answer what it must (see Prefix `answers`). */
  #forged = false

  /** Messages from the server are still answers to statements in front. */
  get #ahead (): boolean {
    return !this.#refusedUnsent && this.passed < this.#prefix.length
  }

  override submit (connection: Connection): Error | null {
    if (this.#refused(connection)) {
      // pg refuses it before writing anything, and so must we: statements written ahead of a
      // refused one would wait for a Sync that never comes.
      this.#refusedUnsent = true
      return super.submit(connection)
    }
    if (!this.requiresPreparation()) {
      // (Texts only: one with parameters made the statement extended.)
      const prefix = this.#prefix.join(';') + ';'
      this.#shift = prefix.length
      connection.query(prefix + (this.text as string))
      return null
    }
    // One write for everything (pg corks only its own messages): no packet, and no server
    // wake-up, per message.
    const { stream } = connection
    stream.cork?.()
    try {
      for (const name of this.#close) connection.close({ type: 'S', name })
      for (const statement of this.#prefix) {
        if (typeof statement === 'string') {
          connection.parse({ text: statement })
          connection.bind({})
        } else {
          const { text, values, name } = statement
          const known = name === undefined ? undefined : connection.parsedStatements[name] ?? connection.submittedNamedStatements[name]
          if (known !== text) {
            // In doubt (a batch it was in failed): closed first, in case the server has it.
            if (known === IN_DOUBT) connection.close({ type: 'S', name: name as string })
            connection.parse({ text, name })
            if (name !== undefined) connection.submittedNamedStatements[name] = text
          }
          connection.bind({ statement: name, values })
        }
        connection.execute({})
      }
      const error = super.submit(connection)
      this.#name = this.name
      this.name = undefined
      return error
    } finally {
      stream.uncork?.()
    }
  }

  /** What pg's own submit() refuses (see pg/lib/query.js). */
  #refused (connection: Connection): boolean {
    const { text, name, values } = this
    const named = typeof name === 'string' && name !== ''
    // (A name alone runs a statement prepared earlier: the extended protocol.)
    if (typeof text !== 'string' && !named) return true
    if (values !== undefined && values !== null && !Array.isArray(values)) return true
    if (!named) return false
    const known = connection.parsedStatements[name] ?? connection.submittedNamedStatements[name]
    return typeof text === 'string' && known !== undefined && known !== text
  }

  override handleRowDescription (msg: unknown): void {
    if (!this.#ahead) super.handleRowDescription(msg)
  }

  override handleDataRow (msg: unknown): void {
    if (!this.#ahead) return super.handleDataRow(msg)
    const statement = this.#prefix[this.passed]
    const answers = typeof statement === 'object' ? statement.answers : undefined
    if (answers === undefined || answered((msg as { fields: unknown[] }).fields, answers.row)) return
    // Something else answers under its name (a function prepared another statement by it): the
    // statement behind it fails, and the next batch closes the name and prepares it again.
    this._canceledDueToError = answers.otherwise()
    this.#forged = true
  }

  override handleCommandComplete (msg: unknown, connection: Connection): void {
    if (!this.#ahead) return super.handleCommandComplete(msg, connection)
    // One in front has answered; after the last, the statement's own messages follow.
    const done = this.#prefix[this.passed]
    if (typeof done === 'object' && done.name !== undefined) {
      if (this.#forged) connection.parsedStatements[done.name] = IN_DOUBT
      else if (connection.submittedNamedStatements[done.name] !== undefined) connection.parsedStatements[done.name] = done.text
      delete connection.submittedNamedStatements[done.name]
    }
    this.#forged = false
    if (++this.passed === this.#prefix.length) this.name = this.#name
  }

  override handleError (error: Error, connection: Connection): void {
    const located = error as Error & { position?: string }
    if (this.#shift > 0 && located.position !== undefined) located.position = String(Number(located.position) - this.#shift)
    if (this.#ahead) {
      // One in front failed: the statement was skipped, so it is not prepared.
      this.name = this.#name
      if (this.name !== undefined) delete connection.submittedNamedStatements[this.name]
      // Whether the server has the named ones from there on is not known (the failing one may
      // have been parsed): the next batch closes and prepares them again.
      for (const statement of this.#prefix.slice(this.passed)) {
        if (typeof statement === 'string' || statement.name === undefined) continue
        delete connection.submittedNamedStatements[statement.name]
        connection.parsedStatements[statement.name] = IN_DOUBT
      }
    }
    super.handleError(error, connection)
  }
}
