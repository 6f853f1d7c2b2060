/**
 * GET /metrics in Prometheus text format (prom-client): pool gauges and counters read from each
 * database's `stats()` at scrape time, and histograms fed from the plugin's diagnostics channels
 * (checkout wait, hold time, ping duration) as events happen. Every series has a `db` label:
 * `default`, or the name a further database was registered with.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import type { FastifyInstance } from 'fastify'
import type { PgDecorator, PoolStats } from 'fastify-pg-pool'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/** `databases`: each database by its label, e.g. `{ default: app.pg, replica: app.pg.replica }`. */
export async function metrics (app: FastifyInstance, databases: Record<string, PgDecorator> = { default: app.pg }): Promise<void> {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const registers = [registry]
  const labelNames = ['db']
  const each = Object.entries(databases)

  const gauge = (name: string, help: string, read: (stats: PoolStats) => number): void => {
    // eslint-disable-next-line no-new
    new Gauge({
      name,
      help,
      labelNames,
      registers,
      collect () {
        for (const [db, { stats }] of each) this.set({ db }, read(stats()))
      }
    })
  }
  gauge('pg_pool_connections', 'Connections open or being opened', (s) => s.total)
  gauge('pg_pool_connections_idle', 'Connections idle in the pool', (s) => s.idle)
  gauge('pg_pool_connections_active', 'Connections checked out, opening, pinged or returning', (s) => s.active)
  gauge('pg_pool_waiting', 'Checkouts waiting for a connection', (s) => s.waiting)

  // Counters since the pool started, read from stats() when Prometheus scrapes.
  const counter = (name: string, help: string, read: (stats: PoolStats) => number): void => {
    // eslint-disable-next-line no-new
    new Counter({
      name,
      help,
      labelNames,
      registers,
      collect () {
        this.reset()
        for (const [db, { stats }] of each) this.inc({ db }, read(stats()))
      }
    })
  }
  counter('pg_pool_acquires_total', 'Checkouts that got a connection', (s) => s.acquires)
  counter('pg_pool_connections_created_total', 'Connections opened', (s) => s.created)
  counter('pg_pool_pings_total', 'Pings before handing out a connection idle past pingIdleMs', (s) => s.pings)
  counter('pg_pool_ping_failures_total', 'Pings that failed (the connection was replaced)', (s) => s.pingFailures)
  counter('pg_pool_acquire_timeouts_total', 'Checkouts that failed with FST_PG_ACQUIRE_TIMEOUT', (s) => s.acquireTimeouts)
  counter('pg_pool_shed_total', 'Requests answered 503 FST_PG_SATURATED', (s) => s.shed)
  counter('pg_pool_leaks_total', 'Checkouts held past leakDetectionMs', (s) => s.leaks)
  // eslint-disable-next-line no-new
  new Counter({
    name: 'pg_pool_connections_destroyed_total',
    help: 'Connections closed, by reason',
    labelNames: ['db', 'reason'],
    registers,
    collect () {
      this.reset()
      for (const [db, { stats }] of each) {
        for (const [reason, n] of Object.entries(stats().destroyed)) this.inc({ db, reason }, n)
      }
    }
  })

  // Histograms from the diagnostics channels: every event, not a summary of the last minute.
  const buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
  const wait = new Histogram({ name: 'pg_pool_acquire_wait_seconds', help: 'Time to check out a connection', labelNames, buckets, registers })
  const hold = new Histogram({ name: 'pg_pool_hold_seconds', help: 'Time a connection was held by its request or client', labelNames, buckets, registers })
  const ping = new Histogram({ name: 'pg_pool_ping_seconds', help: 'Ping round trips', labelNames: ['db', 'ok'], buckets, registers })
  // The channels are the process's: keep this app's pools' messages only, labelled by database.
  const labels = new Map<unknown, string>(each.map(([db, { pool }]) => [pool, db]))
  const mine = (fn: (db: string, message: any) => void) => (message: any): void => {
    const db = labels.get(message.pool)
    if (db !== undefined) fn(db, message)
  }
  const listeners: Array<[string, (message: any) => void]> = [
    ['fastify-pg-pool:acquire', mine((db, m) => { if (m.error === undefined) wait.observe({ db }, m.waitMs / 1000) })],
    ['fastify-pg-pool:release', mine((db, m) => hold.observe({ db }, m.holdMs / 1000))],
    ['fastify-pg-pool:ping', mine((db, m) => ping.observe({ db, ok: String(m.ok) }, m.durationMs / 1000))]
  ]
  for (const [name, fn] of listeners) subscribe(name, fn)
  app.addHook('onClose', async () => {
    for (const [name, fn] of listeners) unsubscribe(name, fn)
  })

  app.get('/metrics', { config: { pgPool: { shedding: false } } }, async (_req, reply) => {
    reply.type(registry.contentType)
    return await registry.metrics()
  })
}
