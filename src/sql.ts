/**
 * Reading SQL text the way PostgreSQL reads it, as far as the plugin needs to: which statement a
 * query object carries, and its tokens (so that comments, string literals and quoted identifiers
 * cannot hide or fake a keyword).
 */

/**
 * The SQL text a statement carries: a string, a query config's `text`, or a Submittable's (a
 * pg-cursor has `text`; a pg-query-stream keeps it on its `cursor`).
 */
export function textOf (statement: unknown): string | undefined {
  if (typeof statement === 'string') return statement
  const object = statement as { text?: unknown, cursor?: { text?: unknown } } | null | undefined
  const text = object?.text ?? object?.cursor?.text
  return typeof text === 'string' ? text : undefined
}

// ASCII characters of a word: 1 anywhere in it, 2 after its first character. To PostgreSQL every
// character from U+0080 up is a letter.
const WORD = new Uint8Array(128)
for (const [from, to] of ['AZ', 'az', '09', '__']) WORD.fill(1, from!.charCodeAt(0), to!.charCodeAt(0) + 1)
WORD[36] = 2 // $
const E_STRING = /'(?:[^'\\]|\\[\s\S]|'')*'?/y
const DOLLAR_TAG = /\$(?:[A-Za-z_\u0080-\uffff][\w\u0080-\uffff]*)?\$/y
const COMMENT_EDGE = /\/\*|\*\/|$/g

/**
 * PostgreSQL's tokens, as far as the checks need them: words (numbers too) lower-cased; a quoted
 * identifier as `"` and its name; a string literal (plain, E'', dollar-quoted) as `'` and its raw
 * text; any other character on its own. White space and comments (nested ones too) are dropped.
 * Something unterminated runs to the end of the text (the server refuses such a text anyway).
 * `max`: stop after that many tokens. `escapes`: read every string literal as E'' (a backslash
 * escapes), as the server does with `standard_conforming_strings` off.
 */
export function lex (text: string, max = Infinity, escapes = false): string[] {
  const tokens: string[] = []
  const n = text.length
  let i = 0
  while (i < n && tokens.length < max) {
    const c = text.charCodeAt(i)
    if (c <= 32) {
      i++
    } else if (c >= 128 || WORD[c] === 1) {
      let j = i + 1
      for (; j < n; j++) {
        const d = text.charCodeAt(j)
        if (d < 128 && WORD[d] === 0) break
      }
      if (j === i + 1 && (c === 101 || c === 69) && text.charCodeAt(j) === 39) { // E'...'
        E_STRING.lastIndex = j
        E_STRING.exec(text)
        tokens.push("'" + text.slice(j, E_STRING.lastIndex))
        j = E_STRING.lastIndex
      } else {
        tokens.push(text.slice(i, j).toLowerCase())
      }
      i = j
    } else if (c === 45 && text.charCodeAt(i + 1) === 45) { // -- to the end of the line
      while (i < n && text.charCodeAt(i) !== 10 && text.charCodeAt(i) !== 13) i++
    } else if (c === 47 && text.charCodeAt(i + 1) === 42) { // /* ... */, nested
      COMMENT_EDGE.lastIndex = i + 2
      for (let depth = 1; depth > 0;) depth += COMMENT_EDGE.exec(text)![0] === '/*' ? 1 : -1
      i = COMMENT_EDGE.lastIndex
    } else if (c === 39 && escapes) { // '...' read as E'...'
      E_STRING.lastIndex = i
      E_STRING.exec(text)
      tokens.push("'" + text.slice(i, E_STRING.lastIndex))
      i = E_STRING.lastIndex
    } else if (c === 39 || c === 34) { // '...' or "...", the quote doubled inside
      let j = i
      do j = (text.indexOf(text[i]!, j + 1) >>> 0) + 1
      while (text.charCodeAt(j) === c)
      tokens.push(c === 39 ? "'" + text.slice(i, j) : '"' + text.slice(i + 1, j - 1).replaceAll('""', '"'))
      i = j
    } else {
      DOLLAR_TAG.lastIndex = i
      const tag = c === 36 ? DOLLAR_TAG.exec(text) : null
      if (tag === null) {
        tokens.push(text[i]!)
        i++
      } else { // $tag$ ... $tag$
        const end = (text.indexOf(tag[0], i + tag[0].length) >>> 0) + tag[0].length
        tokens.push("'" + text.slice(i, end))
        i = end
      }
    }
  }
  return tokens
}

/**
 * The text holds more than one statement (a `;` with a statement after it), which only the simple
 * protocol runs: what the extended protocol refuses ("cannot insert multiple commands into a
 * prepared statement"). Most texts have no `;` and are not split into tokens.
 */
export function several (text: string): boolean {
  return text.includes(';') && eitherReading(text, more)
}

/** A statement after the first `;`. */
function more (tokens: string[]): boolean {
  const end = tokens.indexOf(';')
  return end !== -1 && tokens.slice(end + 1).some((token) => token !== ';')
}

/**
 * `test` holds for the text read as the server reads it: with a backslash in the text, read both
 * ways (standard_conforming_strings may be off, and a session can turn it off), either counts.
 */
export function eitherReading (text: string, test: (tokens: string[]) => boolean): boolean {
  return test(lex(text)) || (text.includes('\\') && test(lex(text, Infinity, true)))
}
