import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { Conn } from './conn.js'

/**
 * Leak detection (`leakDetectionMs`): a checkout held past the threshold logs one warning with
 * who holds it and the stack where it was checked out. One sweep every quarter of the threshold,
 * no timer per checkout; off (and free) when the threshold is 0.
 */
export class LeakDetector {
  readonly #thresholdMs: number
  readonly #log: FastifyBaseLogger
  readonly #connections: Iterable<Conn>
  readonly #onLeak: () => void
  readonly #timer: NodeJS.Timeout | undefined

  constructor (thresholdMs: number, log: FastifyBaseLogger, connections: Iterable<Conn>, onLeak: () => void) {
    this.#thresholdMs = thresholdMs
    this.#log = log
    this.#connections = connections
    this.#onLeak = onLeak
    if (thresholdMs > 0) {
      this.#timer = setInterval(() => this.#sweep(), Math.max(10, Math.min(thresholdMs / 4, 5000))).unref()
    }
  }

  get on (): boolean { return this.#thresholdMs > 0 }

  /** Where a checkout is asked for, when detection is on: a stack costs microseconds. */
  origin (): Error | undefined {
    return this.#thresholdMs > 0 ? new Error('checked out here') : undefined
  }

  stop (): void {
    clearInterval(this.#timer)
  }

  #sweep (): void {
    const now = performance.now()
    for (const conn of this.#connections) {
      const { lease } = conn
      if (lease === undefined || lease.leaked || now - lease.since < this.#thresholdMs) continue
      lease.leaked = true
      this.#onLeak()
      const { holder } = lease
      this.#log.warn({
        requestId: holder?.id,
        method: holder?.method,
        route: holder?.routeOptions.url,
        heldMs: Math.round(now - lease.since),
        stack: lease.origin?.stack
      }, `fastify-pg-pool: a connection has been checked out for more than leakDetectionMs (${this.#thresholdMs} ms)`)
    }
  }
}
