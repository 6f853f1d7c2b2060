/**
 * What the fault suite measures: a burst of real HTTP requests against an app whose route runs
 * one statement, with the status and latency of each.
 */
import type { FastifyInstance } from 'fastify'
import { listen } from './util.js'

export interface Outcome { status: number, ms: number, body: any }

/** Adds GET /q (one statement: the backend pid and the server's port) and listens. */
export async function serve (app: FastifyInstance): Promise<(path?: string) => Promise<Outcome>> {
  app.get('/q', async (req) => (await req.db.query(
    "select pg_backend_pid() as pid, current_setting('port')::int as port")).rows[0])
  const base = await listen(app)
  return async (path = '/q') => {
    const start = performance.now()
    const res = await fetch(base + path)
    const body = await res.json()
    return { status: res.status, ms: performance.now() - start, body }
  }
}

/** Runs `count` requests, `concurrency` at a time. */
export async function burst (request: () => Promise<Outcome>, count: number, concurrency = 1): Promise<Outcome[]> {
  const outcomes: Outcome[] = []
  let next = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count) {
      next++
      outcomes.push(await request())
    }
  }))
  return outcomes
}

/** Failures and the slowest latency, for the test log (the closing notes quote these lines). */
export function summary (outcomes: Outcome[]): { failed: number, statuses: Record<number, number>, maxMs: number, p50Ms: number } {
  const statuses: Record<number, number> = {}
  for (const o of outcomes) statuses[o.status] = (statuses[o.status] ?? 0) + 1
  const sorted = outcomes.map((o) => o.ms).sort((a, b) => a - b)
  return {
    failed: outcomes.filter((o) => o.status !== 200).length,
    statuses,
    maxMs: Math.round(sorted[sorted.length - 1] ?? 0),
    p50Ms: Math.round((sorted[Math.floor(sorted.length / 2)] ?? 0) * 10) / 10
  }
}
