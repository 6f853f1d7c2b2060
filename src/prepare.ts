import type { Client } from 'pg'
import { forgetStatements, isPrepared } from './pg-internals.js'

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
 * first, at most `size`. An evicted one stays prepared on the server until its connection comes
 * back (`deallocation`): a statement already queued in pg under its name still runs. The server
 * holds at most `size` + a tenth of it.
 */
export class Statements {
  readonly #size: number
  readonly #names = new Map<string, string>()
  /** Evicted, or whose plan went stale: to deallocate on the way back. */
  #stale: string[] = []

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
        this.#stale.push(old)
      }
      name = `fpp_${(++made).toString(36)}`
    }
    names.set(text, name)
    return name
  }

  /**
   * The server refused `text`'s statement by `name`: it no longer has it (26000: a DEALLOCATE or
   * DISCARD the plugin did not see), or its plan cannot change the columns it returns (0A000,
   * after a schema change: it still exists, and is deallocated on the way back). The next use
   * prepares it again under a new name.
   */
  drop (client: Client, text: string, name: string, gone: boolean): void {
    // (Another statement that failed the same way may have dropped it already.)
    if (this.#names.get(text) === name) this.#names.delete(text)
    if (gone) forgetStatements(client, [name])
    else if (!this.#stale.includes(name)) this.#stale.push(name)
  }

  /**
   * The DEALLOCATE the connection needs on its way back, or undefined: once a tenth of the cache
   * (at least one) was evicted, so a churning cache costs one round trip per tenth, not one per
   * return. Only names pg saw prepared: one whose Parse failed (or was never sent) does not exist.
   */
  deallocation (client: Client): string | undefined {
    if (this.#stale.length < Math.ceil(this.#size / 10)) return undefined
    const names = this.#stale.filter((name) => isPrepared(client, name))
    this.#stale = []
    if (names.length === 0) return undefined
    // (Names made above: letters, digits and `_`, valid unquoted.)
    forgetStatements(client, names)
    return names.map((name) => `deallocate ${name}`).join(';')
  }

  /** After DISCARD ALL: the server has none of them any more. */
  clear (): void {
    this.#names.clear()
    this.#stale = []
  }
}

/**
 * The text to prepare `statement` under, when the plugin prepares it: a statement with
 * parameters (given beside it, `values`, or in its config), not named, not a cursor or stream,
 * not `prepare: false` nor `queryMode: 'simple'`.
 */
export function preparable (statement: unknown, values: unknown): string | undefined {
  if (typeof statement === 'string') return Array.isArray(values) && values.length > 0 ? statement : undefined
  if (statement === null || typeof statement !== 'object') return undefined
  const config = statement as { text?: unknown, name?: unknown, values?: unknown, submit?: unknown, prepare?: unknown, queryMode?: unknown }
  if (typeof config.text !== 'string' || config.name != null || typeof config.submit === 'function' || config.prepare === false || config.queryMode === 'simple') return undefined
  const given = values ?? config.values
  return Array.isArray(given) && given.length > 0 ? config.text : undefined
}

/** `statement` to run by `name`: a copy (pg writes the values it is given into the config). */
export function named (statement: unknown, text: string, name: string): object {
  return typeof statement === 'string' ? { text, name } : { ...(statement as object), name }
}

/**
 * The server refused a statement by its name, before running it: 26000 (prepared statement does
 * not exist), or 0A000 raised by plan revalidation ("cached plan must not change result type").
 * `gone`: the server has no such statement.
 */
export function staleStatement (error: Error): { gone: boolean } | undefined {
  const { code, routine } = error as { code?: unknown, routine?: unknown }
  if (code === '26000') return { gone: true }
  if (code === '0A000' && routine === 'RevalidateCachedQuery') return { gone: false }
  return undefined
}
