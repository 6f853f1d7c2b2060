import type { PoolClient } from 'pg'
import type { Conn } from './conn.js'

/**
 * A checked-out client as users receive it: the real pg client, except that `query` refuses
 * to run once the checkout is over (so it can never touch a connection someone else holds
 * by then) and `release` is the checkout's own.
 */
export function guardClient (
  conn: Conn,
  usable: () => boolean,
  release: (error?: Error | boolean) => void,
  refusal: () => Error
): PoolClient {
  const { client } = conn
  const query = (...args: unknown[]): unknown => {
    if (usable()) return (client.query as (...a: unknown[]) => unknown)(...args)
    const error = refusal()
    const last = args[args.length - 1]
    if (typeof last === 'function') return process.nextTick(last as (e: Error) => void, error)
    if (typeof (args[0] as { submit?: unknown } | null | undefined)?.submit === 'function') throw error
    return Promise.reject(error)
  }
  return new Proxy(client as PoolClient, {
    get (target, key) {
      if (key === 'query') return query
      if (key === 'release') return release
      const value: unknown = Reflect.get(target, key, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
}
