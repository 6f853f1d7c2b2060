import type { Client } from 'pg'
import { forgetStatements } from './pg-internals.js'

/**
 * Prepared statements by default (what pgx and postgres.js do, and pg-pool does not): a statement
 * with parameters is prepared once per connection under a name the plugin makes, and then run by
 * that name (Bind and Execute only: the server parses and plans it once per connection, not once
 * per run). pg records what each connection has prepared (`parsedStatements`) and sends Parse
 * only for a name it has not seen: the plugin only chooses the names.
 *
 * Only statements with parameters: a statement without any is often text built per request,
 * which a cache would only churn through. A statement the user named, a cursor or stream, a
 * config with `prepare: false` or `queryMode: 'simple'` is sent as given.
 */

/** Names are never reused, so a name pg or the server still knows never means another text. */
let made = 0

/**
 * The statements one connection has prepared for the plugin: text → name, least recently used
 * first, at most `size`. An evicted one (and one whose plan went stale) is closed on the server
 * with the next statement the plugin prepares on the connection: a Close message written in the
 * same batch, no round trip of its own, and no error if the server had already dropped it.
 */
export class Statements {
  readonly #size: number
  readonly #names = new Map<string, string>()
  /** To close on the server with the next statement. */
  #closing: string[] = []

  constructor (size: number) {
    this.#size = size
  }

  /** The name `text` runs under here: its own (now the most recently used), or a new one. */
  nameOf (text: string): string {
    const names = this.#names
    let name = names.get(text)
    if (name !== undefined) {
      names.delete(text)
    } else {
      if (names.size >= this.#size) {
        const [oldest, old] = names.entries().next().value as [string, string]
        names.delete(oldest)
        this.#closing.push(old)
      }
      name = `fpp_${(++made).toString(36)}`
    }
    names.set(text, name)
    return name
  }

  /**
   * `text`'s statement, by `name`, is no use any more: the server no longer has it (`gone`: a
   * DEALLOCATE or DISCARD the plugin did not see; pg closed it after a value failed to
   * serialise), or its plan cannot return the columns it was prepared with (it is closed). The
   * next use prepares it again under a new name.
   */
  drop (client: Client, text: string, name: string, gone: boolean): void {
    // (Another statement that failed the same way may have dropped it already.)
    if (this.#names.get(text) === name) this.#names.delete(text)
    if (gone) forgetStatements(client, [name])
    else if (!this.#closing.includes(name)) this.#closing.push(name)
  }

  /** The names to close now, forgotten by pg (the Close goes out with the next statement). */
  closing (client: Client): readonly string[] {
    if (this.#closing.length === 0) return NONE
    const names = this.#closing
    this.#closing = []
    forgetStatements(client, names)
    return names
  }

  /**
   * A DEALLOCATE or DISCARD went by, which may or may not have dropped them: every one is closed
   * with the next statement (no error if gone), and prepared again under a new name when used.
   */
  doubt (): void {
    this.#closing.push(...this.#names.values())
    this.#names.clear()
  }

  /** After DISCARD ALL: the server has none of them any more. */
  clear (): void {
    this.#names.clear()
    this.#closing = []
  }
}

const NONE: readonly string[] = []

/**
 * The text to prepare `statement` under, when the plugin prepares it: a statement with
 * parameters (given beside it, `values`, or in its config; `any`: with or without), not named,
 * not a cursor or stream, not `prepare: false` nor `queryMode: 'simple'`.
 */
export function preparable (statement: unknown, values: unknown, any = false): string | undefined {
  if (typeof statement === 'string') return any || (Array.isArray(values) && values.length > 0) ? statement : undefined
  if (statement === null || typeof statement !== 'object') return undefined
  const config = statement as { text?: unknown, name?: unknown, values?: unknown, submit?: unknown, prepare?: unknown, queryMode?: unknown }
  if (typeof config.text !== 'string' || config.name != null || typeof config.submit === 'function' || config.prepare === false || config.queryMode === 'simple') return undefined
  const given = values ?? config.values
  return any || (Array.isArray(given) && given.length > 0) ? config.text : undefined
}

/** `statement` to run by `name`: a copy (pg writes the values it is given into the config). */
export function named (statement: unknown, text: string, name: string): object {
  return typeof statement === 'string' ? { text, name } : { ...(statement as object), name }
}

/**
 * What a prepared statement's failure says of the statement itself: the server refused it by
 * name before running it, 26000 (it does not exist, as the server reports at Bind) or 0A000 of
 * plan revalidation ("cached plan must not change result type"): `resend`, it never ran. Or a
 * value failed to serialise in pg (an error without a server severity): pg closed the statement
 * on the server (`gone`), and nothing ran.
 */
export function staleStatement (error: Error): { gone: boolean, resend: boolean } | undefined {
  const { code, routine, severity } = error as { code?: unknown, routine?: unknown, severity?: unknown }
  if (code === '26000' && routine === 'FetchPreparedStatement') return { gone: true, resend: true }
  if (code === '0A000' && routine === 'RevalidateCachedQuery') return { gone: false, resend: true }
  if (severity === undefined && code === undefined) return { gone: true, resend: false }
  return undefined
}
