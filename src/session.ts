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

// Every statement the checks below flag contains one of these.
const CANDIDATE = /set|listen|prepare|declare|load|discard|temp|advisory|\bdo\b/i

// Sent as its own statement, these change the session: SET (but not SET LOCAL, SET TRANSACTION
// or SET CONSTRAINTS, which end with the transaction), RESET, LISTEN, PREPARE, LOAD, DISCARD.
const STARTERS = new Set(['set', 'reset', 'listen', 'prepare', 'load', 'discard'])
const TRANSACTION_SET = new Set(['local', 'transaction', 'constraints'])
const SESSION_LOCKS = new Set(['pg_advisory_lock', 'pg_advisory_lock_shared', 'pg_try_advisory_lock', 'pg_try_advisory_lock_shared'])
const TEMP = new Set(['temp', 'temporary'])
const SCOPE = new Set(['global', 'local'])
// `select ... into temp from t` creates a table named temp: after INTO TEMP comes a name, not these.
const NOT_A_NAME = new Set(['from', 'where', 'group', 'having', 'window', 'order', 'limit', 'offset', 'fetch', 'for', 'union', 'intersect', 'except'])
const TEMP_SCHEMA = /^pg_temp(?:_\d+)?$/
// Inside a DO block's body (PL/pgSQL, strings it EXECUTEs): any of these words, loosely.
const DO_BODY = /\b(?:set|reset|listen|prepare|load|discard|hold|temp|temporary|set_config|pg_settings|pg_temp(?:_\d+)?|pg_(?:try_)?advisory_lock(?:_shared)?)\b/i

export function changesSession (statement: unknown): boolean {
  const text = typeof statement === 'string' ? statement : (statement as { text?: unknown } | null)?.text
  return typeof text === 'string' && CANDIDATE.test(text) && changes(lex(text))
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
  const token = tokens[i]!
  const at = (j: number): string => tokens[j] ?? ''
  switch (token) {
    case 'create': { // CREATE [ OR REPLACE ] [ GLOBAL | LOCAL ] { TEMP | TEMPORARY } ...
      let j = i + 1
      if (at(j) === 'or' && at(j + 1) === 'replace') j += 2
      if (SCOPE.has(at(j))) j++
      return TEMP.has(at(j))
    }
    case 'into': { // SELECT ... INTO [ GLOBAL | LOCAL ] { TEMP | TEMPORARY } [ TABLE ] name
      if (at(i - 1) === 'insert' || at(i - 1) === 'merge') return false
      let j = i + 1
      if (SCOPE.has(at(j))) j++
      if (!TEMP.has(at(j++))) return false
      if (at(j) === 'table') j++
      return at(j).startsWith('"') || (/^[a-z_\u0080-\uffff]/.test(at(j)) && !NOT_A_NAME.has(at(j)))
    }
    case 'update': { // UPDATE [ ONLY ] [ pg_catalog. ] pg_settings: the same as SET
      let j = i + 1
      if (at(j) === 'only') j++
      if (name(at(j)) === 'pg_catalog' && at(j + 1) === '.') j += 2
      return name(at(j)) === 'pg_settings'
    }
  }
  const called = name(token)
  return (TEMP_SCHEMA.test(called) && at(i + 1) === '.') || // anything made in pg_temp, pg_temp_N
    SESSION_LOCKS.has(called) ||
    (called === 'set_config' && at(i + 1) === '(' && !localConfig(tokens, i + 2))
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

/** A word or quoted identifier as the name it stands for; '' for anything else. */
function name (token: string): string {
  if (token.startsWith('"')) return token.slice(1)
  return /^[a-z_\u0080-\uffff]/.test(token) ? token : ''
}

// One token at a time: white space or a line comment (1), the start of a block comment (2), a
// string literal, E'', dollar-quoted (3, its tag 4), a quoted identifier (5), a word (6), or else
// a number, a parameter, one character. An unterminated one runs to the end (the server refuses
// such a text anyway).
const TOKEN = /(\s+|--[^\n\r]*)|(\/\*)|([eE]'(?:[^'\\]|\\[\s\S]|'')*'?|(\$(?:[A-Za-z_\u0080-\uffff][\w\u0080-\uffff]*)?\$)[\s\S]*?(?:\4|$)|'(?:[^']|'')*'?)|("(?:[^"]|"")*"?)|([A-Za-z_\u0080-\uffff][\w$\u0080-\uffff]*)|[0-9][\w.]*|\$[0-9]+|[\s\S]/y
// Block comments nest.
const COMMENT = /\/\*|\*\/|$/g

/**
 * PostgreSQL's tokens, as far as the checks need them: words lower-cased; a quoted identifier as
 * `"` and its name; a string literal as `'` and its raw text; anything else as it is. White space
 * and comments are dropped.
 */
function lex (text: string): string[] {
  const tokens: string[] = []
  TOKEN.lastIndex = 0
  for (let m = TOKEN.exec(text); m !== null; m = TOKEN.exec(text)) {
    if (m[1] !== undefined) continue
    if (m[2] !== undefined) {
      COMMENT.lastIndex = TOKEN.lastIndex
      for (let depth = 1; depth > 0;) depth += COMMENT.exec(text)![0] === '/*' ? 1 : -1
      TOKEN.lastIndex = COMMENT.lastIndex
    } else if (m[3] !== undefined) {
      tokens.push("'" + m[3])
    } else if (m[5] !== undefined) {
      tokens.push('"' + m[5].slice(1, -1).replaceAll('""', '"'))
    } else {
      tokens.push(m[6]?.toLowerCase() ?? m[0])
    }
  }
  return tokens
}
