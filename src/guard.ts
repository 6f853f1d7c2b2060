import type { EventEmitter } from 'node:events'
import type { PoolClient } from 'pg'
import type { Conn } from './conn.js'
import { noop } from './deadline.js'
import { isConnectionError, lostConnectionError, PgCommitUnknownError, refused } from './errors.js'
import { failReads, queued, unqueue, type Submittable } from './pg-internals.js'
import { commits } from './transaction.js'

export interface GuardedClient {
  /** The real pg client, except for `query` (refused when over) and `release` (the checkout's). */
  readonly client: PoolClient
  /**
   * The checkout ends: listeners added through `client` are removed, and every cursor and stream
   * opened through it is closed (nobody can read them any more, and a suspended cursor would
   * hold the connection forever). Reads still waiting fail with `why`; a cursor still waiting in
   * pg's queue is taken out of it, never sent, and fails with `why` too.
   */
  close (why: Error): void
  /** Closes the cursors and streams only (the plugin is about to end a transaction they are in). */
  closeCursors (why: Error): void
}

type Callback = (error: Error | null, result?: unknown) => void

const LISTENER_METHODS = ['on', 'addListener', 'once', 'prependListener', 'prependOnceListener'] as const
type ListenerMethod = typeof LISTENER_METHODS[number]

/**
 * A checked-out client as users receive it: the real pg client, except that `query` refuses
 * to run once the checkout is over (so it can never touch a connection someone else holds
 * by then) and `release` is the checkout's own.
 */
export function guardClient (
  conn: Conn,
  /** Why the client cannot run a statement now, if it cannot. */
  refusal: () => Error | undefined,
  release: (error?: Error | boolean) => void,
  /** Sees every statement before it is sent; returns the one to send, or throws to refuse it. */
  admit: (statement: unknown) => unknown,
  /** Hands an admitted statement (not a cursor or stream) to pg; its outcome reaches `callback` (Wire.call). */
  send: (statement: unknown, values: unknown, callback: Callback) => void,
  /** Told of every statement refused, and of every COMMIT whose outcome is unknown (to log them). */
  notify: (error: Error) => void = noop
): GuardedClient {
  const { client } = conn
  const cursors: Submittable[] = []
  const query = (...args: unknown[]): unknown => {
    const first = args[0] as Partial<Submittable> | null | undefined
    const submittable = typeof first?.submit === 'function'
    let error: unknown = refusal()
    if (error === undefined) {
      try {
        args[0] = admit(first)
      } catch (refused) {
        error = refused
      }
    }
    const last = args[args.length - 1]
    if (error === undefined) {
      if (submittable) {
        cursors.push(first as Submittable)
        return (client.query as (...a: unknown[]) => unknown)(...args)
      }
      // pg's forms: (statement, callback), (statement, values, callback), and the promise ones.
      const values = typeof args[1] === 'function' ? undefined : args[1]
      // A lost connection reaches the caller as a coded error (a COMMIT's outcome as unknown).
      const settle = (callback: Callback): void => send(args[0], values, (e, result) => {
        if (e == null || !isConnectionError(e)) return callback(e, result)
        const coded = lostConnectionError(e, commits(args[0]))
        if (coded instanceof PgCommitUnknownError) notify(coded)
        callback(coded, result)
      })
      if (typeof last === 'function') return settle(last as Callback)
      return new Promise((resolve, reject) => settle((e, result) => e == null ? resolve(result) : reject(e)))
    }
    notify(error as Error)
    if (typeof last === 'function') return process.nextTick(last as (e: Error) => void, error)
    if (submittable) throw error
    return refused(error)
  }
  // Listeners added through this client belong to its checkout: removed when it ends, or a
  // later holder's notifications and notices would reach this one's handlers.
  const listeners: Array<[string | symbol, (...args: any[]) => void]> = []
  // A client ended by its user never goes back to the pool (its 'end' event may come too late).
  const end = (...args: unknown[]): unknown => {
    conn.condemn('error')
    return (client.end as (...a: unknown[]) => unknown)(...args)
  }
  const emitter: EventEmitter = client
  const listen = (method: ListenerMethod) => (event: string | symbol, listener: (...args: any[]) => void): PoolClient => {
    listeners.push([event, listener])
    emitter[method](event, listener)
    return proxy
  }
  const adding = new Map(LISTENER_METHODS.map((method) => [method, listen(method)]))
  const proxy = new Proxy(client as PoolClient, {
    get (target, key) {
      if (key === 'query') return query
      if (key === 'release') return release
      if (key === 'end') return end
      const add = adding.get(key as ListenerMethod)
      if (add !== undefined) return add
      const value: unknown = Reflect.get(target, key, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return {
    client: proxy,
    close (why) {
      for (const [event, listener] of listeners.splice(0)) client.removeListener(event, listener)
      this.closeCursors(why)
    },
    closeCursors (why) {
      for (const cursor of cursors.splice(0)) {
        // Nobody can read it any more: an error nobody listens to would crash the process.
        if (typeof cursor.on === 'function' && cursor.listenerCount?.('error') === 0) cursor.on('error', noop)
        if (queued(client, cursor)) {
          // Never sent: out of pg's queue, failed as pg fails what is queued when a client ends.
          unqueue(client, cursor)
          if (typeof cursor.handleError === 'function') cursor.handleError(why)
        } else if (typeof cursor.destroy === 'function') {
          // A stream: destroying it closes its cursor, or ends its COPY (a no-op once done).
          cursor.destroy(why)
        } else {
          // A bare cursor: the reads awaited hear why, then it closes (a no-op once done).
          failReads(cursor, why)
          cursor.close?.(noop)
        }
      }
    }
  }
}
