/**
 * A `ledger` table for the transaction tests: a row per note, so that what was committed can be
 * read back from outside the app. Emptied before each test.
 */
import type { Database } from './postgres.js'

interface Hooks { beforeEach (fn: () => unknown): void }

export async function ledger (t: Hooks, db: Database, { unique = false } = {}): Promise<{ notes (): Promise<string[]>, insert (note: string): string }> {
  await db.admin(`create table ledger (note text${unique ? ' primary key' : ''})`)
  t.beforeEach(async () => { await db.admin('truncate ledger') })
  return {
    /** The notes committed, in order. */
    notes: async () => (await db.admin('select note from ledger order by note')).rows.map((r) => r.note),
    /** The statement that adds `note`. */
    insert: (note) => `insert into ledger values ('${note}')`
  }
}

/** An error's `code`, for tests that collect outcomes. */
export const code = (error: unknown): unknown => (error as { code?: unknown }).code

/** Route config for a route transaction. */
export const tx = { config: { pgPool: { transaction: true } } }
