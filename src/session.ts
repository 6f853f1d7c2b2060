/**
 * Does a statement possibly leave state on the session for the next holder of the connection?
 * Read from its text, so it costs two regular-expression tests and no round trip. A false
 * positive costs one DISCARD ALL; what text cannot show (a function that calls set_config)
 * is what `sessionReset: 'always'` is for.
 */

// Statements that change the session when they start one: SET (not SET LOCAL, which ends with
// the transaction, but telling them apart is not worth it), RESET, LISTEN, PREPARE, DECLARE
// (WITH HOLD cursors), LOAD, DISCARD. Leading comments are skipped.
const STARTS = /(?:^|;)\s*(?:(?:--[^\n]*\n|\/\*[\s\S]*?\*\/)\s*)*(?:set|reset|listen|prepare|declare|load|discard)\b/i
// Anywhere in the text: session-level config, session advisory locks, temporary objects.
const ANYWHERE = /\b(?:set_config|pg_(?:try_)?advisory_lock(?:_shared)?)\b|\btemp(?:orary)?\s+(?:table|view|sequence)\b/i

export function changesSession (statement: unknown): boolean {
  const text = typeof statement === 'string' ? statement : (statement as { text?: unknown } | null)?.text
  return typeof text === 'string' && (STARTS.test(text) || ANYWHERE.test(text))
}
