import { performance } from 'node:perf_hooks'

const BUCKET_MS = 100
const BUCKETS = 20 // a 2 s window

/**
 * How fast connections come back, over the last two seconds, in 100 ms buckets: the basis of a
 * `Retry-After` that means something. Recording is one array write; no timer.
 */
export class ReturnRate {
  readonly #counts = new Array<number>(BUCKETS).fill(0)
  /** The absolute bucket number each slot of `#counts` holds. */
  readonly #slots = new Array<number>(BUCKETS).fill(-1)

  record (now = performance.now()): void {
    const bucket = Math.floor(now / BUCKET_MS)
    const i = bucket % BUCKETS
    if (this.#slots[i] !== bucket) {
      this.#slots[i] = bucket
      this.#counts[i] = 0
    }
    this.#counts[i]!++
  }

  /** Returns per second over the window (0 when nothing came back lately). */
  perSecond (now = performance.now()): number {
    const current = Math.floor(now / BUCKET_MS)
    let total = 0
    for (let i = 0; i < BUCKETS; i++) {
      if (current - this.#slots[i]! < BUCKETS) total += this.#counts[i]!
    }
    return total / (BUCKETS * BUCKET_MS / 1000)
  }

  /**
   * Whole seconds until a checkout arriving now would likely get a connection: the queue ahead
   * of it divided by the recent return rate, rounded up, clamped to 1..30. With no return seen
   * lately, `fallbackMs` (the checkout deadline) stands in.
   */
  retryAfterSeconds (waiting: number, fallbackMs: number): number {
    const rate = this.perSecond()
    const seconds = rate > 0 ? (waiting + 1) / rate : fallbackMs / 1000
    return Math.min(30, Math.max(1, Math.ceil(seconds)))
  }
}
