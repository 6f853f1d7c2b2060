import pg, { type Client } from 'pg'
import { lex, textOf } from './sql.js'

/**
 * A statement timeout that travels with the statement: `set_config('statement_timeout', ms,
 * true)` is sent in front of it, in the same message batch and the same transaction, so it costs
 * no round trip and leaves nothing on the session. That is what works behind PgBouncer in
 * transaction mode, where a SET would land on whichever server connection PgBouncer picks.
 *
 * - simple protocol (no parameters): one Query message with both statements; PostgreSQL runs
 *   them in one implicit transaction.
 * - extended protocol (parameters, names, row limits): Parse/Bind/Execute of the set_config,
 *   then the statement's own messages and one Sync: one implicit transaction too.
 *
 * The set_config's own result (one row, one command) is dropped here, so the caller sees the
 * result it would have seen without the timeout.
 */

/** What a transaction control statement, or one that must be a transaction's first, starts with. */
const CONTROL_WORDS = new Set(['begin', 'commit', 'end', 'rollback', 'abort', 'savepoint', 'release'])
const MAY_CONTROL = /\b(?:begin|start|commit|end|rollback|abort|savepoint|release|prepare|set)\b/i

/**
 * Transaction control, and what must be a transaction's first statement: never prefixed (a
 * set_config in front of BEGIN ISOLATION LEVEL or SET TRANSACTION breaks them). Read from the
 * first tokens, so comments cannot hide it.
 */
export function isTransactionControl (statement: unknown): boolean {
  const text = textOf(statement)
  if (text === undefined || !MAY_CONTROL.test(text)) return false
  // (a word in a comment, no token at all: neither test below holds)
  const [first = '', second] = lex(text, 2)
  if (CONTROL_WORDS.has(first)) return true
  return second === 'transaction' && (first === 'start' || first === 'prepare' || first === 'set')
}

const setTimeoutSql = (ms: number): string => `select set_config('statement_timeout', '${ms}', true)`

type Connection = {
  query (text: string): void
  parse (msg: { text: string }): void
  bind (msg: object): void
  execute (msg: object): void
  parsedStatements: Record<string, string>
  submittedNamedStatements: Record<string, string>
}

interface PgQuery {
  text: string | undefined
  name: string | undefined
  values: unknown
  requiresPreparation (): boolean
  submit (connection: Connection): Error | null
  handleRowDescription (msg: unknown): void
  handleDataRow (msg: unknown): void
  handleCommandComplete (msg: unknown, connection: Connection): void
  handleError (error: Error, connection: Connection): void
}

const Query = (pg as unknown as { Query: new (...args: unknown[]) => PgQuery }).Query

/** pg's Query, with the statement timeout sent in front of it. */
export class TimedQuery extends Query {
  readonly #sql: string
  /** The set_config's result has been consumed. */
  #ahead = true
  /** Characters in front of the statement's own text (simple protocol): error positions are moved back. */
  #shift = 0
  /**
   * A statement's name, hidden from pg while the set_config is answered: pg records a name as
   * prepared on the first ParseComplete it sees, which is the set_config's.
   */
  #name: string | undefined

  /** pg reads a statement's own `query_timeout` from the object it is given. */
  readonly query_timeout: number | undefined

  constructor (ms: number, config: unknown, values: unknown, callback: Callback) {
    super(config, values, callback)
    this.#sql = setTimeoutSql(ms)
    this.query_timeout = (config as { query_timeout?: number } | null)?.query_timeout
  }

  override submit (connection: Connection): Error | null {
    if (this.#refused(connection)) {
      // pg refuses it before writing anything, and so must we: a set_config written ahead of a
      // refused statement would wait for a Sync that never comes.
      this.#ahead = false
      return super.submit(connection)
    }
    if (!this.requiresPreparation()) {
      this.#shift = this.#sql.length + 1
      connection.query(`${this.#sql};${this.text as string}`)
      return null
    }
    connection.parse({ text: this.#sql })
    connection.bind({})
    connection.execute({})
    const error = super.submit(connection)
    this.#name = this.name
    this.name = undefined
    return error
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

  /** The set_config has answered: the statement's own messages follow. */
  #behind (): void {
    this.#ahead = false
    this.name = this.#name
  }

  override handleRowDescription (msg: unknown): void {
    if (!this.#ahead) super.handleRowDescription(msg)
  }

  override handleDataRow (msg: unknown): void {
    if (!this.#ahead) super.handleDataRow(msg)
  }

  override handleCommandComplete (msg: unknown, connection: Connection): void {
    if (this.#ahead) this.#behind()
    else super.handleCommandComplete(msg, connection)
  }

  override handleError (error: Error, connection: Connection): void {
    const located = error as Error & { position?: string }
    if (this.#shift > 0 && located.position !== undefined) located.position = String(Number(located.position) - this.#shift)
    if (this.#ahead) {
      // The set_config itself failed: the statement was skipped, so it is not prepared.
      this.#behind()
      if (this.name !== undefined) delete connection.submittedNamedStatements[this.name]
    }
    super.handleError(error, connection)
  }
}

type Callback = (error: Error | null, result?: any) => void

/** Sends a statement on `client`, with the statement timeout `timeoutMs` in front when given. */
export function sendStatement (client: Client, statement: unknown, values: unknown, timeoutMs: number | undefined, callback: Callback): void {
  if (timeoutMs === undefined) (client.query as (...args: unknown[]) => unknown)(statement, values, callback)
  else client.query(new TimedQuery(timeoutMs, statement, values, callback) as never)
}
