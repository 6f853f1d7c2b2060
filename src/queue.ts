import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { Conn } from './conn.js'

/**
 * What a checkout can be abandoned through: an AbortSignal, or anything with these members
 * (request.db brings a lighter one: an AbortController per request is measurable).
 */
export interface CheckoutSignal {
  readonly aborted: boolean
  readonly reason: unknown
  addEventListener (type: 'abort', listener: () => void, options?: { once: boolean }): void
  removeEventListener (type: 'abort', listener: () => void): void
}

/** Abandons a checkout when the request ends: an AbortSignal's few members, without its cost. */
export class Abandon implements CheckoutSignal {
  aborted = false
  reason: unknown = undefined
  #listener: (() => void) | undefined

  addEventListener (_type: 'abort', listener: () => void): void { this.#listener = listener }
  removeEventListener (): void { this.#listener = undefined }

  abort (reason: unknown): void {
    this.aborted = true
    this.reason = reason
    this.#listener?.()
  }
}

/** A checkout waiting for a connection. */
export interface Waiter {
  readonly deadline: number
  readonly since: number
  /** The checkout's logger (the request's). */
  readonly log: FastifyBaseLogger
  resolve (conn: Conn | Promise<Conn>): void
  reject (error: unknown): void
  readonly signal: CheckoutSignal | undefined
  readonly onAbort: () => void
}

/**
 * Checkouts waiting for a connection, first come first served. Each leaves by being served
 * (`next()`), by its deadline (`onExpired` builds the error, then it is rejected), or by its
 * signal (rejected with the signal's reason). One timer serves the whole queue, armed for the
 * earliest deadline: under load most checkouts wait a little, and a timer each is measurable.
 */
export class WaitQueue {
  readonly #waiters = new Set<Waiter>()
  readonly #onExpired: (waiter: Waiter) => Error
  #timer: NodeJS.Timeout | undefined
  /** When #timer fires (Infinity: not armed). */
  #timerAt = Infinity

  constructor (onExpired: (waiter: Waiter) => Error) {
    this.#onExpired = onExpired
  }

  get size (): number { return this.#waiters.size }

  /** How long the oldest waiting checkout has waited (0 when none waits). */
  oldestWaitMs (): number {
    const oldest = this.#waiters.values().next().value as Waiter | undefined
    return oldest === undefined ? 0 : performance.now() - oldest.since
  }

  /** Queues a checkout; it settles with a connection (or the promise of one), or an error. */
  wait (deadline: number, signal: CheckoutSignal | undefined, log: FastifyBaseLogger): Promise<Conn> {
    return new Promise<Conn>((resolve, reject) => {
      const waiter: Waiter = {
        deadline,
        since: performance.now(),
        log,
        resolve,
        reject,
        signal,
        onAbort: () => this.#remove(waiter).reject(signal?.reason)
      }
      signal?.addEventListener('abort', waiter.onAbort, { once: true })
      this.#waiters.add(waiter)
      this.#arm(deadline)
    })
  }

  /** Takes the first waiting checkout out of the queue (there is one), for the caller to settle. */
  next (): Waiter {
    return this.#remove(this.#waiters.values().next().value as Waiter)
  }

  /** Rejects every waiting checkout (the pool is closing) and disarms the timer. */
  rejectAll (error: () => Error): void {
    clearTimeout(this.#timer)
    this.#timerAt = Infinity
    for (const waiter of this.#waiters) this.#remove(waiter).reject(error())
  }

  #remove (waiter: Waiter): Waiter {
    this.#waiters.delete(waiter)
    waiter.signal?.removeEventListener('abort', waiter.onAbort)
    return waiter
  }

  #arm (deadline: number): void {
    if (deadline >= this.#timerAt) return
    clearTimeout(this.#timer)
    this.#timerAt = deadline
    this.#timer = setTimeout(() => this.#expire(), Math.max(0, Math.ceil(deadline - performance.now()))).unref()
  }

  /** Fails the checkouts whose deadline passed, and re-arms for the next one. */
  #expire (): void {
    this.#timerAt = Infinity
    const now = performance.now()
    let next = Infinity
    for (const waiter of this.#waiters) {
      if (waiter.deadline <= now) {
        const error = this.#onExpired(waiter) // sees the queue as it was, this waiter included
        this.#remove(waiter).reject(error)
      } else {
        next = Math.min(next, waiter.deadline)
      }
    }
    if (next !== Infinity) this.#arm(next)
  }
}
