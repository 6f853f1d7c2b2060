import { PgIdentityUnsupportedError, PgSessionStateError } from './errors.js'
import type { Conn } from './conn.js'
import { noop } from './deadline.js'
import type { Identity } from './identity.js'
import type { ResolvedOptions } from './options.js'
import { busy, PrefixedQuery, waiting, type Prefix } from './pg-internals.js'
import { named, preparable, staleStatement, Statements } from './prepare.js'
import { changesSession } from './session.js'
import { lex, several, textOf } from './sql.js'

/**
 * The one way a statement reaches pg, whoever sends it (`request.db`, `fastify.pg.query`, a
 * `connection()` or `pool.connect()` client, a cursor): `admit` sees it first, a `Clock` says
 * whether a statement timeout travels with it, `send` hands it over.
 */

/** What a transaction control statement, or one that must be a transaction's first, starts with. */
const CONTROL_WORDS = new Set(['begin', 'commit', 'end', 'rollback', 'abort', 'savepoint', 'release'])
/** What a statement PostgreSQL refuses inside a transaction block (SQLSTATE 25001) may start with. */
const BLOCKLESS_WORDS = new Set(['vacuum', 'discard', 'cluster', 'reindex', 'create', 'drop', 'alter'])
const MAY_MATTER = /\b(?:begin|start|commit|end|rollback|abort|savepoint|release|prepare|set|vacuum|discard|cluster|reindex|create|drop|alter)\b/i

/**
 * Never sent with statements in front (`PrefixedQuery` makes them one implicit transaction):
 * transaction control and what must be a transaction's first statement (`control`: a set_config
 * in front of BEGIN ISOLATION LEVEL or SET TRANSACTION breaks them), and what PostgreSQL refuses
 * inside a transaction block (`blockless`): VACUUM, DISCARD ALL, CLUSTER of every table,
 * CONCURRENTLY index builds and drops, REINDEX of a schema, a database or the system (or
 * CONCURRENTLY), DETACH PARTITION CONCURRENTLY, CREATE/DROP DATABASE, TABLESPACE or SUBSCRIPTION,
 * ALTER DATABASE SET TABLESPACE, ALTER SYSTEM. (The statement timeout bounds those from the client
 * side only: see `Clock.bound`.) Read from tokens, so comments cannot hide it.
 */
export function standsAlone (statement: unknown): 'control' | 'blockless' | undefined {
  const text = textOf(statement)
  if (text === undefined || !MAY_MATTER.test(text)) return undefined
  // (a word in a comment, no token at all: no test below holds)
  const [first = '', second = ''] = lex(text, 2)
  if (CONTROL_WORDS.has(first)) return 'control'
  if (second === 'transaction' && (first === 'start' || first === 'prepare' || first === 'set')) return 'control'
  // (DDL and maintenance: read whole, the words that decide may come late.)
  return BLOCKLESS_WORDS.has(first) && blockless(lex(text)) ? 'blockless' : undefined
}

/** Does PostgreSQL refuse this statement (its tokens) inside a transaction block? */
function blockless (tokens: string[]): boolean {
  const end = tokens.indexOf(';')
  const statement = end === -1 ? tokens : tokens.slice(0, end)
  const [first] = statement
  // After the first word, a parenthesised option list (VACUUM (...), CLUSTER (VERBOSE), REINDEX (...)).
  let i = 1
  if (statement[i] === '(') i = statement.indexOf(')', i) + 1 || statement.length
  const next = statement[i] ?? ''
  switch (first) {
    case 'vacuum': return true
    case 'discard': return next === 'all'
    // Without a table (CLUSTER [VERBOSE]): every table.
    case 'cluster': return statement.length === i || (next === 'verbose' && statement.length === i + 1)
    case 'reindex': return ['system', 'database', 'schema'].includes(next) || statement.includes('concurrently')
    case 'alter':
      if (next === 'database') return statement.some((token, j) => token === 'set' && statement[j + 1] === 'tablespace')
      // ... DETACH PARTITION ... CONCURRENTLY
      return next === 'system' || next === 'subscription' || statement.includes('concurrently')
    // create, drop: [UNIQUE] INDEX CONCURRENTLY, DATABASE, TABLESPACE, SUBSCRIPTION
    default: return ['database', 'tablespace', 'subscription'].includes(next) || statement.includes('concurrently')
  }
}

/**
 * Which statements of one checkout carry the statement timeout (see PrefixedQuery): outside a
 * transaction every one; inside one the first (the setting is local to the transaction), and the
 * first after transaction control (a rollback to a savepoint undoes it). Never control itself.
 */
export class Clock {
  readonly #ms: number
  /**
   * How long pg waits for each statement's answer (its `query_timeout`): the timeout plus the
   * cancel grace, so a blackholed socket cannot hold a request past it. (None when the timeout is 0.)
   */
  readonly bound: number
  /** The open transaction already carries the timeout. */
  #timed = false

  constructor (ms: number, graceMs: number) {
    this.#ms = ms
    this.bound = ms > 0 ? Math.min(ms + graceMs, MAX_MS) : MAX_MS
  }

  /** The timeout to send with `statement`, about to meet transaction status `tx`. */
  next (statement: unknown, tx: string | null): number | undefined {
    if (standsAlone(statement) !== undefined) this.#timed = false
    else if (tx === 'I' || (tx === 'T' && !this.#timed)) {
      this.#timed = tx === 'T'
      return this.#ms
    }
    return undefined
  }
}

export class Wire {
  readonly #opts: ResolvedOptions

  constructor (opts: ResolvedOptions) {
    this.#opts = opts
  }

  /**
   * The clock for a checkout whose route sets `routeMs` (undefined: the plugin's), or none when no
   * timeout travels with statements: directly on PostgreSQL the plugin's own timeout is a
   * connection parameter (free); a route's own, or any behind PgBouncer, travels.
   */
  clock (routeMs: number | undefined): Clock | undefined {
    const { statementTimeoutMs, pgbouncer } = this.#opts
    const ms = routeMs ?? statementTimeoutMs
    if (pgbouncer ? ms > 0 : ms !== statementTimeoutMs) return new Clock(ms, this.#opts.cancelGraceMs)
    return undefined
  }

  /**
   * Every statement passes here just before it is handed to pg on `conn`, and is sent as
   * returned. Directly on PostgreSQL: notes whether it may change the session (to reset it on
   * return). Behind PgBouncer: refuses session state outside a transaction, and sends named
   * prepared statements unnamed (PgBouncer 1.18 cannot keep them: the next transaction may run
   * on another server connection).
   */
  admit (conn: Conn, statement: unknown, tx = conn.client.getTransactionStatus()): unknown {
    if (!this.#opts.pgbouncer) {
      // With sessionReset 'always' the text is not trusted: whatever ran may have left state.
      if (!conn.dirty && (this.#opts.sessionReset === 'always' || changesSession(statement))) conn.dirty = true
      return statement
    }
    if (tx === 'I' && changesSession(statement)) throw new PgSessionStateError()
    const named = statement as { name?: unknown, submit?: unknown } | null
    if (typeof named?.name === 'string' && typeof named.submit !== 'function') return { ...named, name: undefined }
    return statement
  }

  /**
   * Admits `statement` and hands it to pg with what travels with it (`carry`: the timeout its
   * clock gives it, the identity). Throws when it is refused (nothing was sent); pg's own answer,
   * or its refusal, reaches `callback`. `begin`: the BEGIN of the transaction it is the first
   * statement of, sent in front of it in the same round trip (`callback` hears whether it ran).
   */
  send (conn: Conn, statement: unknown, values: unknown, carry: Carry, callback: Callback, begin?: string): void {
    const { clock } = carry
    let tx = conn.client.getTransactionStatus()
    if (begin !== undefined) {
      // The BEGIN first, as if sent alone: the statement then meets an open transaction.
      clock?.next(begin, tx)
      tx = 'T'
    }
    const admitted = this.admit(conn, statement, tx)
    const ms = clock?.next(admitted, tx)
    const prefix: Prefix[] = ms === undefined ? [] : [`select set_config('statement_timeout', '${ms}', true)`]
    if (begin !== undefined) prefix.unshift(begin)
    // (With a clock, each statement carries its own bound; else pg's client-wide one applies.)
    this.deliver(conn, clock === undefined ? admitted : bounded(admitted, clock.bound), values, carry, callback, prefix)
  }

  /**
   * Hands an admitted statement to pg with the identity in front of it (see identity.ts), and
   * `prefix`. A statement that cannot have it in front (simple protocol only) gets it sent just
   * before it, inside a transaction; outside one that would not hold, and it is refused (thrown).
   */
  deliver (conn: Conn, statement: unknown, values: unknown, carry: Carry, callback: Callback, prefix: Prefix[] = []): void {
    if (dropsPrepared(statement)) {
      // Once it ran (or failed), whether the server still has what the plugin prepared is not known.
      const told = callback
      callback = (error, result, passed) => {
        conn.preparedInDoubt()
        told(error, result, passed)
      }
    }
    const { identity } = carry
    const takes = identity === undefined ? 'none' : takesIdentity(statement)
    if (takes === 'front') {
      prefix.push(this.#sendable(identity as Identity))
      // It goes the extended way anyway: prepared even without parameters (a query RLS filters
      // often has none), so it is not parsed and planned on every run. Only outside a
      // transaction, where a plan gone stale (0A000 after an ALTER TABLE) is prepared again and
      // sent once more: inside one it would fail the transaction, as it does not unprepared.
      const { client } = conn
      const outside = !busy(client) && client.getTransactionStatus() === 'I' && !prefix.some(opens)
      return this.call(conn, statement, values, callback, carry.prepare && (outside ? 'all' : true), prefix)
    } else if (takes !== 'none') {
      // (The identity's own failure is what the statement after it fails for.)
      let failed: Error | null = null
      this.lead(conn, statement, identity as Identity, takes, (error) => { failed = error })
      return this.call(conn, statement, values, (error, result, passed) => callback(error && (failed ?? error), result, passed), carry.prepare, prefix)
    }
    this.call(conn, statement, values, callback, carry.prepare, prefix)
  }

  /**
   * Sends `identity` on its own, just before `statement`, which cannot have it in front (`takes`:
   * why; a cursor, stream or COPY when not given): only inside a transaction, which it then holds
   * for (`heard`: its outcome). Throws, sending nothing, outside one (or when pg's status may be
   * stale: something is still running), and for what cannot carry it at all.
   */
  lead (conn: Conn, statement: unknown, identity: Identity, takes = takesIdentity(statement) as Exclude<Takes, 'none' | 'front'>, heard: (error: Error | null) => void = noop): void {
    const { client } = conn
    if (takes === 'alone' && !busy(client) && client.getTransactionStatus() === 'T') {
      // A failure aborts the transaction: the statement after it fails too.
      return this.call(conn, identity.text, identity.values, heard, false)
    }
    throw new PgIdentityUnsupportedError(unsupported(takes, busy(client)))
  }

  /** The identity as sent here: prepared under its name where statements are prepared. */
  #sendable (identity: Identity): Prefix {
    return this.#opts.prepare ? identity : { text: identity.text, values: identity.values }
  }

  /** Statements with parameters are prepared (see prepare.ts): never behind PgBouncer. */
  get prepares (): boolean {
    return this.#opts.prepare
  }

  /**
   * Hands an admitted statement to pg (`prefix`: statements sent in front of it, see
   * PrefixedQuery), prepared when `prepare` says so and it has parameters (`'all'`: even without).
   * One the server refuses by name because it dropped it or its plan went stale never ran: it is prepared again and sent
   * once more, when nothing else can have run in between (no transaction open or begun with it,
   * nothing queued ahead of it or behind it).
   */
  call (conn: Conn, statement: unknown, values: unknown, callback: Callback, prepare: boolean | 'all', prefix: readonly Prefix[] = []): void {
    const { client } = conn
    const text = prepare !== false && !this.#opts.pgbouncer ? preparable(statement, values, prepare === 'all') : undefined
    if (text === undefined) return submit(client, prefix, statement, values, callback)
    const statements = conn.statements ??= new Statements(this.#opts.statementCacheSize)
    const alone = !busy(client) && client.getTransactionStatus() === 'I' && !prefix.some(opens)
    const name = statements.nameOf(text)
    submit(client, prefix, named(statement, text, name), values, (error, result, passed) => {
      const stale = error === null ? undefined : staleStatement(error)
      if (stale === undefined) return callback(error, result, passed)
      statements.drop(client, text, name, stale.gone)
      if (stale.resend && alone && !waiting(client)) submit(client, prefix, named(statement, text, statements.nameOf(text)), values, callback, statements.closing(client))
      else callback(error, result, passed)
    }, statements.closing(client))
  }
}

/**
 * Hands `statement` to pg: as it is when nothing goes in front of it (most statements), else in a
 * PrefixedQuery with the statements in front and the prepared statements to close.
 */
function submit (client: Conn['client'], prefix: readonly Prefix[], statement: unknown, values: unknown, done: Callback, close: readonly string[] = []): void {
  if (prefix.length === 0 && close.length === 0) return (client.query as (...args: unknown[]) => void)(statement, values, done)
  const query: PrefixedQuery = new PrefixedQuery(prefix, statement, values, (error, result) => done(error, result, query.passed), close)
  client.query(query as never)
}

/** Why a statement that cannot have the identity in front of it cannot be sent. */
function unsupported (takes: Takes, running: boolean): string {
  switch (takes) {
    case 'blockless': return "A statement PostgreSQL refuses inside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ...) cannot carry the request's identity"
    case 'several': return "A string of several statements cannot carry the request's identity (only the simple protocol runs it, and a COMMIT in it would end the identity): send them one by one"
    default: return running
      ? "A cursor, stream, COPY or `queryMode: 'simple'` statement carries the request's identity only once nothing else runs on the connection (the transaction it will meet is not known yet): await the statements before it"
      : "A cursor, stream, COPY or `queryMode: 'simple'` statement carries the request's identity only inside a transaction: run it in request.db.transaction() or a route transaction"
  }
}

/** A statement in front that begins a transaction: what follows fails inside it. */
const opens = (statement: Prefix): boolean => typeof statement === 'string' && statement.startsWith('begin')

const DROPS = /\b(?:deallocate|discard)\b/i

/** A DEALLOCATE (of any name, or all) or DISCARD ALL: the plugin's prepared statements may be gone. */
function dropsPrepared (statement: unknown): boolean {
  const text = textOf(statement)
  if (text === undefined || !DROPS.test(text)) return false
  const [first, second] = lex(text, 2)
  return first === 'deallocate' || (first === 'discard' && second === 'all')
}

/** What travels with a holder's statements. */
export interface Carry {
  /** Which statements carry the statement timeout, when one travels with them. */
  readonly clock: Clock | undefined
  /** Statements with parameters are prepared: the route's word, else its database's. */
  readonly prepare: boolean
  /** The request's identity, in front of every statement but transaction control. */
  readonly identity: Identity | undefined
}

/**
 * How a statement takes the identity: not at all (transaction control: nothing runs in it);
 * in front of it (most: the extended protocol carries the parameters); just before it, inside a
 * transaction (a cursor, stream or COPY, or `queryMode: 'simple'`: their messages are their
 * own); never (a string of several statements: a COMMIT in it would end the identity; what
 * PostgreSQL refuses inside a transaction block).
 */
type Takes = 'none' | 'front' | 'alone' | 'several' | 'blockless'

export function takesIdentity (statement: unknown): Takes {
  const config = statement as { submit?: unknown, queryMode?: unknown } | null
  // (A cursor's or a COPY's text too: pg.Query and pg-copy-streams send theirs in the simple protocol.)
  const text = textOf(statement)
  if (text !== undefined && several(text)) return 'several'
  if (typeof config?.submit === 'function') return 'alone'
  const alone = standsAlone(statement)
  if (alone === 'control') return 'none'
  if (alone === 'blockless') return 'blockless'
  return config?.queryMode === 'simple' ? 'alone' : 'front'
}

/** pg's callback; `passed`: how many of the statements sent in front completed. */
export type Callback = (error: Error | null, result?: any, passed?: number) => void

/** Node's timers take at most 2^31 - 1 ms: longer is none. */
const MAX_MS = 2 ** 31 - 1

/** The statement as a config with pg's `query_timeout` (a cursor or stream is left as it is; the user's own value wins). */
function bounded (statement: unknown, ms: number): unknown {
  if (typeof statement === 'string') return { text: statement, query_timeout: ms }
  const config = statement as { submit?: unknown, query_timeout?: unknown } | null
  if (config === null || typeof config !== 'object' || typeof config.submit === 'function' || config.query_timeout !== undefined) return statement
  return { ...config, query_timeout: ms }
}
