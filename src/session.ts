/**
 * Does a statement possibly leave state on the session for the next holder of the connection?
 * Read from its text, with no round trip: a statement with none of the words below is not looked
 * at further; one with any is split into PostgreSQL's tokens (comments, string literals and
 * quoted identifiers read as the server reads them) and checked statement by statement.
 *
 * A false positive costs one DISCARD ALL (and, behind PgBouncer, a refused statement outside a
 * transaction). What the text cannot show, a function or procedure that creates a temporary
 * table, calls set_config or takes an advisory lock, is what `sessionReset: 'always'` is for.
 */

import { eitherReading, textOf } from './sql.js'

// Every statement the checks below flag matches this: one of the statements that change the
// session by what they are, at the start of the text or after a `;` or a comment; or one of the
// words they look for anywhere. Most statements do not, and are not split into tokens.
const CANDIDATE = /(?:^|;|\*\/|--[^\n\r]*[\n\r])\s*(?:set|reset|listen|unlisten|prepare|deallocate|declare|load|discard|do)\b|\btemp(?:orary)?\b|pg_temp|pg_settings|set_config|advisory_lock/i

// Sent as its own statement, these change the session: SET (but not SET LOCAL, SET TRANSACTION
// or SET CONSTRAINTS, which end with the transaction), RESET, LISTEN, UNLISTEN (a channel
// onConnect listens on), PREPARE, DEALLOCATE (a statement pg believes prepared, gone for the
// next holder), LOAD, DISCARD.
const STARTERS = new Set(['set', 'reset', 'listen', 'unlisten', 'prepare', 'deallocate', 'load', 'discard'])
const TRANSACTION_SET = new Set(['local', 'transaction', 'constraints'])
const SESSION_LOCKS = new Set(['pg_advisory_lock', 'pg_advisory_lock_shared', 'pg_try_advisory_lock', 'pg_try_advisory_lock_shared'])
const TEMP = new Set(['temp', 'temporary'])
const SCOPE = new Set(['global', 'local'])
// `select ... into temp from t` creates a table named temp: after INTO TEMP comes a name, not these.
const NOT_A_NAME = new Set(['from', 'where', 'group', 'having', 'window', 'order', 'limit', 'offset', 'fetch', 'for', 'union', 'intersect', 'except'])
const TEMP_SCHEMA = /^pg_temp(?:_\d+)?$/
// Inside a DO block's body (PL/pgSQL, strings it EXECUTEs): any of these words, loosely.
const DO_BODY = /\b(?:set|reset|listen|unlisten|prepare|deallocate|load|discard|hold|temp|temporary|set_config|pg_settings|pg_temp(?:_\d+)?|pg_(?:try_)?advisory_lock(?:_shared)?)\b/i

export function changesSession (statement: unknown): boolean {
  // (Most statements are plain strings: no call to find their text.)
  const text = typeof statement === 'string' ? statement : textOf(statement)
  return text !== undefined && CANDIDATE.test(text) && eitherReading(text, changes)
}

function changes (tokens: string[]): boolean {
  let start = 0
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!
    if (token === ';') start = i + 1
    else if ((i === start && starts(tokens, i)) || anywhere(tokens, i)) return true
  }
  return false
}

/** The statement starting at `i` changes the session by what it is. */
function starts (tokens: string[], i: number): boolean {
  const token = tokens[i]!
  if (token === 'set') return !TRANSACTION_SET.has(tokens[i + 1]!)
  if (STARTERS.has(token)) return true
  if (token !== 'declare' && token !== 'do') return false
  // DECLARE: a cursor WITH HOLD outlives its transaction; DO: what its body may run.
  for (let j = i + 1; j < tokens.length && tokens[j] !== ';'; j++) {
    if (token === 'declare' && tokens[j] === 'hold' && tokens[j - 1] === 'with') return true
    if (token === 'do' && tokens[j]!.startsWith("'") && DO_BODY.test(tokens[j]!)) return true
  }
  return false
}

/** The tokens at `i` change the session wherever they stand in a statement. */
function anywhere (tokens: string[], i: number): boolean {
  switch (tokens[i]) {
    case 'create': { // CREATE [ OR REPLACE ] [ GLOBAL | LOCAL ] { TEMP | TEMPORARY } ...
      let j = i + 1
      if (at(tokens, j) === 'or' && at(tokens, j + 1) === 'replace') j += 2
      if (SCOPE.has(at(tokens, j))) j++
      return TEMP.has(at(tokens, j))
    }
    case 'into': { // SELECT ... INTO [ GLOBAL | LOCAL ] { TEMP | TEMPORARY } [ TABLE ] name
      if (at(tokens, i - 1) === 'insert' || at(tokens, i - 1) === 'merge') return false
      let j = i + 1
      if (SCOPE.has(at(tokens, j))) j++
      if (!TEMP.has(at(tokens, j++))) return false
      if (at(tokens, j) === 'table') j++
      const next = at(tokens, j)
      return next.startsWith('"') || (/^[a-z_\u0080-\uffff]/.test(next) && !NOT_A_NAME.has(next))
    }
    case 'update': { // UPDATE [ ONLY ] [ pg_catalog. ] pg_settings: the same as SET
      let j = i + 1
      if (at(tokens, j) === 'only') j++
      if (name(at(tokens, j)) === 'pg_catalog' && at(tokens, j + 1) === '.') j += 2
      return name(at(tokens, j)) === 'pg_settings'
    }
    case 'set_config':
    case '"set_config':
      return at(tokens, i + 1) === '(' && !localConfig(tokens, i + 2)
  }
  const called = name(tokens[i]!)
  return called.startsWith('pg_') &&
    ((TEMP_SCHEMA.test(called) && at(tokens, i + 1) === '.') || SESSION_LOCKS.has(called)) // made in pg_temp, pg_temp_N
}

/**
 * The arguments of set_config starting at `i` end with a literal `true` (is_local), or never end
 * (the server refuses the statement).
 */
function localConfig (tokens: string[], i: number): boolean {
  let depth = 0
  let commas = 0
  for (let j = i; j < tokens.length; j++) {
    const token = tokens[j]
    if (token === '(') depth++
    else if (token === ')' && depth-- === 0) return commas === 2 && tokens[j - 1] === 'true' && tokens[j - 2] === ','
    else if (token === ',' && depth === 0) commas++
  }
  return true
}

const at = (tokens: string[], j: number): string => tokens[j] ?? ''

/** A quoted identifier as the name it stands for. */
function name (token: string): string {
  return token.startsWith('"') ? token.slice(1) : token
}
