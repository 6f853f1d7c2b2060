import { channel } from 'node:diagnostics_channel'
import type { DestroyReason } from './conn.js'

/**
 * Latency summaries over the last minute, in a fixed-bucket histogram: values are microseconds,
 * kept in 16 sub-buckets per power of two (HdrHistogram's layout with 1 significant digit and a
 * bit: at most 6.25 % relative error). Recording is a few integer operations on a Uint32Array,
 * memory is fixed (two histograms of 6 slices of 448 buckets: 22 KB), and nothing is allocated
 * per value. hdr-histogram-js would give more precision than a p99 of a pool needs, for a
 * dependency and a WebAssembly module in every app.
 */
const SUB_BITS = 4
const SUB = 1 << SUB_BITS
/** Buckets for 0 .. 2^31 µs (35 minutes); longer values land in the last one. */
const BUCKETS = (31 - SUB_BITS + 1) * SUB
const SLICE_MS = 10_000
const SLICES = 6
export const WINDOW_MS = SLICE_MS * SLICES

function bucketOf (us: number): number {
  if (us < SUB) return us
  const exponent = 31 - Math.clz32(us) // >= SUB_BITS
  return Math.min(BUCKETS - 1, (exponent - SUB_BITS + 1) * SUB + ((us >>> (exponent - SUB_BITS)) & (SUB - 1)))
}

/** The largest value a bucket holds (a percentile is reported as its bucket's upper bound). */
function upperOf (bucket: number): number {
  if (bucket < SUB) return bucket
  const exponent = Math.floor(bucket / SUB) + SUB_BITS - 1
  const sub = bucket % SUB
  return (SUB + sub + 1) * 2 ** (exponent - SUB_BITS) - 1 // (a shift would overflow 32 bits at the top)
}

export interface Summary {
  /** Values recorded in the window. */
  count: number
  p50: number
  p90: number
  p99: number
  max: number
}

/** Milliseconds with microsecond resolution: short in JSON, precise enough for a pool. */
const ms = (us: number): number => Math.round(us) / 1000

export class WindowHistogram {
  readonly #counts = Array.from({ length: SLICES }, () => new Uint32Array(BUCKETS))
  readonly #max = new Float64Array(SLICES)
  readonly #total = new Uint32Array(SLICES)
  /** Which 10-second slice of time each slot holds. */
  readonly #epoch = new Float64Array(SLICES).fill(-1)

  record (valueMs: number, now: number): void {
    const epoch = Math.floor(now / SLICE_MS)
    const slot = epoch % SLICES
    if (this.#epoch[slot] !== epoch) {
      this.#counts[slot]!.fill(0)
      this.#max[slot] = 0
      this.#total[slot] = 0
      this.#epoch[slot] = epoch
    }
    const us = Math.max(0, Math.round(valueMs * 1000))
    this.#counts[slot]![bucketOf(Math.min(us, 2 ** 31 - 1))]!++
    this.#total[slot]!++
    if (us > this.#max[slot]!) this.#max[slot] = us
  }

  summary (now: number): Summary {
    const oldest = Math.floor(now / SLICE_MS) - SLICES + 1
    const live: number[] = []
    let count = 0
    let max = 0
    for (let slot = 0; slot < SLICES; slot++) {
      if (this.#epoch[slot]! < oldest) continue
      live.push(slot)
      count += this.#total[slot]!
      max = Math.max(max, this.#max[slot]!)
    }
    const at = (fraction: number): number => {
      if (count === 0) return 0
      const rank = Math.ceil(count * fraction)
      let seen = 0
      let bucket = 0
      // The counts add up to `count`, so the rank is reached by the top bucket at the latest.
      for (; bucket < BUCKETS - 1; bucket++) {
        for (const slot of live) seen += this.#counts[slot]![bucket]!
        if (seen >= rank) break
      }
      // Never above the exact maximum: the bucket's upper bound may be.
      return ms(Math.min(upperOf(bucket), max))
    }
    return { count, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: ms(max) }
  }
}

/** Counters since the pool started. */
export interface PoolCounters {
  /** Checkouts that got a connection. */
  acquires: number
  /** Connections opened. */
  created: number
  /** Connections closed, by reason. */
  destroyed: Record<DestroyReason, number>
  /** Pings sent to connections idle past `pingIdleMs` (or suspect), and how many failed. */
  pings: number
  pingFailures: number
  /** Checkouts that failed with FST_PG_ACQUIRE_TIMEOUT, FST_PG_QUEUE_FULL, FST_PG_UNAVAILABLE. */
  acquireTimeouts: number
  queueFull: number
  connectFailures: number
  /** Requests answered FST_PG_SATURATED before their handler ran. */
  shed: number
  /** Checkouts held past `leakDetectionMs`. */
  leaks: number
  /**
   * CancelRequests sent for statements still running when their holder let go (or the pool
   * closed), and how many of those statements settled within `cancelGraceMs` (the others'
   * connections were destroyed: `destroyed.stuck`).
   */
  cancels: number
  cancelsSettled: number
}

export function newCounters (): PoolCounters {
  return {
    acquires: 0,
    created: 0,
    destroyed: { error: 0, ping: 0, suspect: 0, idle: 0, lifetime: 0, uses: 0, close: 0, unpooled: 0, stuck: 0 },
    pings: 0,
    pingFailures: 0,
    acquireTimeouts: 0,
    queueFull: 0,
    connectFailures: 0,
    shed: 0,
    leaks: 0,
    cancels: 0,
    cancelsSettled: 0
  }
}

/**
 * Node diagnostics channels, the convention undici and Fastify use: OpenTelemetry, Prometheus
 * or a test subscribes with `diagnostics_channel.subscribe(name, fn)`. A message is built only
 * while someone listens (`hasSubscribers`), so they cost nothing otherwise. The channels are the
 * process's: every message carries `pool` (the `fastify.pg.pool` that sent it), so a subscriber
 * can tell the pools of several apps apart.
 */
export const channels = {
  /** A checkout ended: `{ pool, requestId, waitMs, created, pings }`, or `{ pool, requestId, waitMs, error }`. */
  acquire: channel('fastify-pg-pool:acquire'),
  /** A ping answered or failed: `{ pool, requestId, idleMs, durationMs, ok, error? }`. */
  ping: channel('fastify-pg-pool:ping'),
  /** A connection came back from its holder: `{ pool, requestId, holdMs }`. */
  release: channel('fastify-pg-pool:release'),
  /** A connection was closed: `{ pool, reason, ageMs, uses }`. */
  destroy: channel('fastify-pg-pool:destroy'),
  /** A request was shed with 503: `{ pool, requestId, method, url, retryAfter }`. */
  shed: channel('fastify-pg-pool:shed'),
  /** A running statement was cancelled: `{ pool, settled, durationMs, error? }` (`settled`: within `cancelGraceMs`). */
  cancel: channel('fastify-pg-pool:cancel')
} as const
