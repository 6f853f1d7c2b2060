import { PgInvalidOptionError, PgTransactionAbortedError, PgTransactionControlError, PgTransactionEndedEarlyError } from './errors.js'
import { closest } from './options.js'
import { lex, textOf } from './sql.js'

/**
 * Transactions on one connection as the plugin sees them on the wire: a stack of frames, one per
 * transaction level open on the server. The plugin opens frames (a route transaction,
 * `transaction()`); inside one, the user's own transaction control (an ORM's `db.transaction()`,
 * a raw `BEGIN`) nests as savepoints instead of ending the plugin's transaction:
 *
 * | the user sends | inside a frame it becomes |
 * | --- | --- |
 * | `BEGIN`, `START TRANSACTION` | `SAVEPOINT` (a new frame) |
 * | `COMMIT`, `END` | `RELEASE SAVEPOINT` of the user's frame; in a failed one, a rollback to it (as PostgreSQL's COMMIT of a failed transaction) |
 * | `ROLLBACK`, `ABORT` | `ROLLBACK TO SAVEPOINT` of the user's frame |
 * | `COMMIT`/`ROLLBACK` with no frame of the user's open, `PREPARE TRANSACTION`, `AND CHAIN`, control followed by more statements | refused (`FST_PG_TRANSACTION_CONTROL`) |
 *
 * Everything else (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, `SET TRANSACTION`, `COMMIT PREPARED`)
 * is sent as it is. With no frame open nothing is translated: outside the plugin's transactions
 * the user's control is the user's. A translated statement answers with its own command tag
 * (SAVEPOINT, RELEASE, ROLLBACK).
 */

/** How a top-level `transaction()` begins. Nested transactions (savepoints) take none. */
export interface TransactionOptions {
  isolationLevel?: 'serializable' | 'repeatable read' | 'read committed' | 'read uncommitted'
  readOnly?: boolean
  deferrable?: boolean
}

// Typed so that the lists follow TransactionOptions.
const ISOLATION_LEVELS: Record<NonNullable<TransactionOptions['isolationLevel']>, true> = {
  serializable: true, 'repeatable read': true, 'read committed': true, 'read uncommitted': true
}
const KEYS: Record<keyof TransactionOptions, true> = { isolationLevel: true, readOnly: true, deferrable: true }

/**
 * Throws a coded error for options `begin()` cannot turn into SQL: an unknown key (with the
 * closest known one), a value of the wrong kind. `name` is where they were given
 * (`config.pgPool.transaction`), `where` ends every message (the route).
 */
export function checkTransactionOptions (options: TransactionOptions, name = '', where = ''): void {
  const fail = (key: string, expected: string, value: unknown): never => {
    throw new PgInvalidOptionError(name === '' ? key : `${name}.${key}`, `${expected}${where}`, typeof value === 'string' ? JSON.stringify(value) : String(value))
  }
  for (const [key, value] of Object.entries(options)) {
    if (Object.hasOwn(KEYS, key) || value === undefined) continue
    const near = closest(key, Object.keys(KEYS))
    throw new PgInvalidOptionError(name === '' ? key : `${name}.${key}`, `a transaction option${near === undefined ? '' : ` (did you mean \`${near}\`?)`}${where}`, 'an unknown key')
  }
  const { isolationLevel, readOnly, deferrable } = options
  if (isolationLevel !== undefined && !Object.hasOwn(ISOLATION_LEVELS, isolationLevel)) fail('isolationLevel', `one of ${Object.keys(ISOLATION_LEVELS).join(', ')}`, isolationLevel)
  if (readOnly !== undefined && typeof readOnly !== 'boolean') fail('readOnly', 'true or false', readOnly)
  if (deferrable !== undefined && typeof deferrable !== 'boolean') fail('deferrable', 'true or false', deferrable)
}

function begin ({ isolationLevel, readOnly, deferrable }: TransactionOptions): string {
  let sql = 'begin'
  if (isolationLevel !== undefined) sql += ` isolation level ${isolationLevel}`
  if (readOnly !== undefined) sql += readOnly ? ' read only' : ' read write'
  if (deferrable !== undefined) sql += deferrable ? ' deferrable' : ' not deferrable'
  return sql
}

const nested = (options: TransactionOptions): Error =>
  new PgInvalidOptionError('transaction options', 'none inside another transaction (it is a savepoint)', Object.keys(options).join(', '))

/** Transaction control a statement is. */
type Control = 'begin' | 'commit' | 'rollback' | 'refuse'

/** Words a transaction control statement starts with; a text without any is none. */
const MAY_CONTROL = /\b(?:begin|start|commit|end|rollback|abort|prepare)\b/i

/** The control of the statement whose tokens start at `i` (up to its `;`). */
function controlAt (tokens: string[], i: number): Control | undefined {
  let control: Control
  let j = i + 1
  switch (tokens[i]) {
    case 'begin': control = 'begin'; break
    case 'start': if (tokens[j] !== 'transaction') return undefined; control = 'begin'; break
    case 'commit': case 'end': control = 'commit'; break
    case 'rollback': case 'abort': control = 'rollback'; break
    case 'prepare': return tokens[j] === 'transaction' ? 'refuse' : undefined // else PREPARE name AS ...
    default: return undefined
  }
  if (control !== 'begin') {
    if (tokens[j] === 'work' || tokens[j] === 'transaction') j++
    // ROLLBACK TO SAVEPOINT, COMMIT PREPARED, ROLLBACK PREPARED: not the end of this transaction.
    if (tokens[j] === 'to' || tokens[j] === 'prepared') return undefined
    // ... AND CHAIN ends it and begins another at once.
    if (tokens[j] === 'and' && tokens[j + 1] === 'chain') return 'refuse'
  }
  return control
}

/**
 * Reads the transaction control a statement's text is, if any, from its tokens (comments, as
 * PostgreSQL reads them, cannot hide a COMMIT). Control in a string of several statements cannot
 * be rewritten: `refuse`.
 */
export function controlOf (text: string): Control | undefined {
  if (!MAY_CONTROL.test(text)) return undefined
  const found = controlIn(lex(text))
  // (Read the other way too, as a server with standard_conforming_strings off reads it: control
  // a backslash hid in a string is refused all the same.)
  if (found !== 'refuse' && text.includes('\\') && controlIn(lex(text, Infinity, true)) === 'refuse') return 'refuse'
  return found
}

function controlIn (tokens: string[]): Control | undefined {
  let found: Control | undefined
  let statements = 0
  for (let i = 0; i < tokens.length; i++) {
    if (tokens[i] === ';') continue
    statements++
    found ??= controlAt(tokens, i)
    while (i < tokens.length && tokens[i] !== ';') i++
  }
  return statements > 1 && found !== undefined ? 'refuse' : found
}

/** Is this statement's text a COMMIT (or END)? */
export function commits (statement: unknown): boolean {
  const text = textOf(statement)
  return text !== undefined && controlOf(text) === 'commit'
}

/** One transaction level open on the server. */
export interface Frame {
  /** The savepoint that opened it; none for the transaction itself (a BEGIN). */
  readonly savepoint: string | undefined
  /** Opened by the plugin (a route transaction, `transaction()`); else by the user's BEGIN. */
  readonly managed: boolean
}

/**
 * What to send for a statement, and what its outcome means. `after` sees the outcome and may
 * replace it: an error to report instead (`null`: keep the outcome).
 */
export interface Step {
  readonly statement: unknown
  /** The statement ends a transaction with COMMIT: a connection lost meanwhile leaves it unknown. */
  readonly commits: boolean
  after? (error: Error | null, result: unknown): Error | null
}

/** pg's `getTransactionStatus()`: I (idle), T (in a transaction), E (in a failed one); null before connecting. */
type Status = string | null

export class Frames {
  readonly #stack: Frame[] = []

  /** Transaction levels the plugin knows of; 0 when none of its transactions is open. */
  get size (): number { return this.#stack.length }

  #name (): string {
    return `fastify_pg_pool_${this.#stack.length}`
  }

  /**
   * The plugin opens a transaction level: BEGIN (with `options`) outside a transaction, a
   * savepoint inside one (the user's own BEGIN came first). `frame` is the plugin's handle on it.
   */
  open (options: TransactionOptions, status: Status, onOpen: (frame: Frame) => void): Step {
    const frame: Frame = { savepoint: status === 'I' ? undefined : this.#name(), managed: true }
    if (frame.savepoint !== undefined && Object.keys(options).length > 0) throw nested(options)
    return {
      statement: frame.savepoint === undefined ? begin(options) : `savepoint ${frame.savepoint}`,
      commits: false,
      after: (error) => {
        if (error === null) {
          this.#stack.push(frame)
          onOpen(frame)
        }
        return null
      }
    }
  }

  /**
   * The plugin ends `frame`: commits (or releases) it when `commit`, else rolls it back. Levels
   * still open above it (a `transaction()` that never finished, a BEGIN without COMMIT) did not
   * finish: they are rolled back first. A level PostgreSQL already aborted is rolled back and
   * reported as FST_PG_TRANSACTION_ABORTED; one that is not there any more (something else ended
   * the transaction) as FST_PG_TRANSACTION_ENDED_EARLY, with nothing sent.
   */
  close (frame: Frame, commit: boolean, status: Status): Step {
    const at = this.#stack.indexOf(frame)
    const above = this.#stack[at + 1]
    if (at !== -1) this.#stack.length = at
    if (at === -1 || status === 'I') {
      this.#stack.length = 0
      throw new PgTransactionEndedEarlyError()
    }
    const { savepoint } = frame
    const unfinished = above === undefined ? '' : `rollback to savepoint ${above.savepoint as string}; `
    // An aborted level aborted in itself: an unfinished one above was created before the failure
    // (a savepoint cannot be made in a failed transaction), and rolling back to it undoes it.
    const aborted = status === 'E' && above === undefined
    if (savepoint === undefined) {
      if (!commit || aborted) return { statement: 'rollback', commits: false, after: aborted ? abortedError : undefined }
      return { statement: `${unfinished}commit`, commits: true }
    }
    if (!commit || aborted) return { statement: `rollback to savepoint ${savepoint}`, commits: false, after: aborted ? abortedError : undefined }
    return { statement: `${unfinished}release savepoint ${savepoint}`, commits: false }
  }

  /** The user's statement, translated inside the plugin's transactions (see the table above). */
  translate (statement: unknown, status: Status): Step | undefined {
    const text = textOf(statement)
    if (text === undefined) return undefined
    const control = controlOf(text)
    if (control === undefined) return undefined
    // A cursor or stream cannot be turned into a savepoint statement (nor would one be control).
    if (typeof (statement as { submit?: unknown }).submit === 'function') throw new PgTransactionControlError(text.trim().slice(0, 60))
    const top = this.#stack[this.#stack.length - 1] as Frame
    const mine = !top.managed
    if (control === 'refuse' || (control !== 'begin' && !mine)) throw new PgTransactionControlError(text.trim().slice(0, 60))
    let sql: string
    let after: Step['after']
    if (control === 'begin') {
      const frame: Frame = { savepoint: this.#name(), managed: false }
      this.#stack.push(frame)
      sql = `savepoint ${frame.savepoint as string}`
      after = (error) => {
        if (error !== null && this.#stack[this.#stack.length - 1] === frame) this.#stack.pop()
        return null
      }
    } else {
      this.#stack.pop()
      const name = top.savepoint as string
      // COMMIT of a failed transaction is a rollback in PostgreSQL (it answers ROLLBACK): so here.
      // A savepoint rolled back to stays (until its transaction ends): one statement, one result.
      sql = control === 'commit' && status !== 'E' ? `release savepoint ${name}` : `rollback to savepoint ${name}`
    }
    return { statement: typeof statement === 'string' ? sql : { ...(statement as object), text: sql }, commits: false, after }
  }
}

function abortedError (error: Error | null): Error {
  return error ?? new PgTransactionAbortedError()
}
