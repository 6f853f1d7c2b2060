import type { Client } from 'pg'

/** For promises whose rejection is handled elsewhere, or does not matter. */
export const noop = (): void => {}

/**
 * One statement bounded by `timeoutMs`; a timeout rejects (the caller destroys the client).
 * With `''` it is the cheapest round trip there is: an empty query, no parse, no plan.
 */
export async function roundTrip (client: Client, sql: string, timeoutMs: number): Promise<void> {
  await withTimeout(client.query(sql), timeoutMs)
}

/** A time limit ran out (the timer's own clock decides, not a comparison of clocks). */
export class DeadlineExceeded extends Error {}

/** Settles like `work`, or rejects with DeadlineExceeded after `timeoutMs` (the caller cleans up). */
export async function withTimeout (work: unknown, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const settled = Promise.resolve(work)
  settled.catch(noop)
  try {
    await Promise.race([
      settled,
      new Promise((resolve, reject) => {
        timer = setTimeout(reject, Math.max(0, timeoutMs), new DeadlineExceeded(`no answer within ${Math.round(timeoutMs)} ms`))
      })
    ])
  } finally {
    clearTimeout(timer)
  }
}
