import type { Test } from 'tap'
import Fastify, { type FastifyInstance, type FastifyServerOptions, type RouteShorthandOptions } from 'fastify'
import pgPool, { type PgPoolOptions } from '../../src/index.js'
import type { Pool } from '../../src/pool.js'
import type { Database } from './postgres.js'
import { deferred, until } from './util.js'

interface Teardown { teardown (fn: () => unknown): void }

/** A fresh Fastify app with the plugin registered against the test database. */
export async function buildApp (
  t: Teardown,
  db: Database,
  options: PgPoolOptions = {},
  server: FastifyServerOptions = {}
): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, ...server })
  await app.register(pgPool, { connectionString: db.url, application_name: 'fpp-app', ...options })
  t.teardown(() => app.close())
  return app
}

/** Backends of the app (by application_name) as pg_stat_activity sees them. */
export async function appBackends (db: Database, applicationName = 'fpp-app'): Promise<Array<{ pid: number, state: string }>> {
  const { rows } = await db.admin<{ pid: number, state: string }>(
    'select pid, state from pg_stat_activity where application_name = $1 and datname = current_database()',
    [applicationName]
  )
  return rows
}

/**
 * What every lifecycle path must end with: no connection checked out, no transaction left
 * open on the server, and the pool still serving (with `max: 1` a lost connection would 503).
 */
export async function assertReturned (
  t: Test,
  app: FastifyInstance,
  db: Database
): Promise<void> {
  await until(() => app.pg.stats().active === 0, 'the connection is back in the pool or destroyed')
  const { rows } = await db.admin<{ n: number }>(
    "select count(*)::int as n from pg_stat_activity where application_name = 'fpp-app' and state like 'idle in transaction%'"
  )
  t.equal(rows[0]?.n, 0, 'no idle-in-transaction backend is left')
  const { rows: [row] } = await app.pg.query<{ ok: number }>('select 1 as ok')
  t.equal(row?.ok, 1, 'the pool still serves')
}

/**
 * A route that checks out a connection (one query) and holds it until the test calls
 * `release()`: `holding` resolves once it holds it. Its checkout is tried again when it misses
 * the deadline (a cold pool's first connect can take longer than the short `acquireTimeoutMs`
 * the tests of a full pool use, on a loaded machine); any other failure rejects `holding`, so a
 * test never waits for a hold that cannot come.
 */
export function holdRoute (app: FastifyInstance, path = '/hold', options: RouteShorthandOptions = {}): { holding: Promise<void>, release: () => void } {
  const holding = deferred()
  const release = deferred()
  app.get(path, options, async (req) => {
    for (let attempt = 1; ; attempt++) {
      try {
        await req.db.query('select 1')
        break
      } catch (error) {
        if ((error as { code?: unknown }).code !== 'FST_PG_ACQUIRE_TIMEOUT' || attempt === 20) {
          holding.reject(error)
          throw error
        }
      }
    }
    holding.resolve()
    await release.promise
    return 'held'
  })
  return { holding: holding.promise, release: () => release.resolve() }
}

/** The pool behind `app.pg.pool` with its internal members (the plugin's own checkout), for tests that drive it directly. */
export function poolOf (app: FastifyInstance): Pool {
  return app.pg.pool as Pool
}
