/**
 * A real PgBouncer (Debian's `pgbouncer` package) in transaction mode, in front of the test
 * database. Run in the foreground as the `postgres` user (it refuses root), on a free port.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { closedPort } from './net.js'
import type { Database } from './postgres.js'

interface Teardown { teardown (fn: () => unknown): void }

const CANDIDATES = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer', '/usr/local/bin/pgbouncer']

const runs = (path: string): boolean => spawnSync(path, ['--version']).status === 0

/** The pgbouncer binary (PGBOUNCER names one explicitly), or undefined when there is none. */
export function findPgBouncer (): string | undefined {
  const chosen = process.env.PGBOUNCER
  if (chosen !== undefined && chosen !== '') return runs(chosen) ? chosen : undefined
  const found = spawnSync('sh', ['-c', 'command -v pgbouncer'], { encoding: 'utf8' }).stdout.trim()
  if (found !== '') return found
  return CANDIDATES.find(runs)
}

/**
 * How a test file learns whether it can run: the binary, or the reason to skip. With CI=true a
 * missing pgbouncer is a failure, not a skip (CI installs it: see .ci/run).
 */
export function pgbouncerOrSkip (): { binary: string } | { skip: string } {
  const binary = findPgBouncer()
  if (binary !== undefined) return { binary }
  const reason = 'pgbouncer is not installed (apt-get install -y pgbouncer); PgBouncer tests skipped'
  if (process.env.CI === 'true') throw new Error(`CI=true but ${reason.replace('; PgBouncer tests skipped', '')}`)
  return { skip: reason }
}

export interface PgBouncerOptions {
  poolSize?: number
}

export class PgBouncer {
  readonly port: number
  /** The test database, through PgBouncer. */
  readonly url: string
  readonly database: string
  readonly #adminUrl: string
  readonly #child: ChildProcess
  #log = ''

  /** What PgBouncer wrote to stderr. */
  get log (): string { return this.#log }

  private constructor (port: number, url: string, database: string, adminUrl: string, child: ChildProcess) {
    this.port = port
    this.url = url
    this.database = database
    this.#adminUrl = adminUrl
    this.#child = child
    child.stderr?.on('data', (chunk: Buffer) => { this.#log += chunk.toString() })
  }

  /** Starts PgBouncer in front of `db` and waits for it to accept connections. */
  static async start (t: Teardown, binary: string, db: Database, { poolSize = 5 }: PgBouncerOptions = {}): Promise<PgBouncer> {
    const upstream = new URL(db.url)
    const user = decodeURIComponent(upstream.username)
    const password = decodeURIComponent(upstream.password)
    const database = upstream.pathname.slice(1)
    const folder = mkdtempSync(join(tmpdir(), 'fpp-pgbouncer-'))
    chmodSync(folder, 0o755) // read by the postgres user
    const quote = (s: string): string => `"${s.replace(/"/g, '""')}"`
    writeFileSync(join(folder, 'users.txt'), `${quote(user)} ${quote(password)}\n`, { mode: 0o644 })
    const port = await closedPort()
    writeFileSync(join(folder, 'pgbouncer.ini'), [
      '[databases]',
      `${database} = host=${upstream.hostname} port=${upstream.port} dbname=${database}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${join(folder, 'users.txt')}`,
      `admin_users = ${user}`,
      'pool_mode = transaction',
      `default_pool_size = ${poolSize}`,
      'max_client_conn = 500',
      'server_reset_query =',
      // After a failed or killed server login PgBouncer waits this long before the next (default 15 s).
      'server_login_retry = 1',
      ''
    ].join('\n'), { mode: 0o644 })
    const child = spawn(binary, ['-u', 'postgres', join(folder, 'pgbouncer.ini')], { stdio: ['ignore', 'ignore', 'pipe'] })
    const credentials = `${encodeURIComponent(user)}:${encodeURIComponent(password)}`
    const bouncer = new PgBouncer(
      port,
      `postgres://${credentials}@127.0.0.1:${port}/${database}`,
      database,
      `postgres://${credentials}@127.0.0.1:${port}/pgbouncer`,
      child
    )
    t.teardown(async () => {
      await bouncer.stop()
      rmSync(folder, { recursive: true, force: true })
    })
    await bouncer.#ready()
    return bouncer
  }

  async #ready (): Promise<void> {
    const deadline = Date.now() + 10_000
    while (!this.#log.includes('process up')) {
      if (this.#child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`pgbouncer did not start (exit ${String(this.#child.exitCode)}):\n${this.#log}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }

  /** Runs a command on PgBouncer's admin console (SHOW POOLS, KILL db, RESUME db, ...). */
  async admin<R extends pg.QueryResultRow = any>(command: string): Promise<R[]> {
    const client = new pg.Client({ connectionString: this.#adminUrl })
    client.on('error', () => {})
    await client.connect()
    try {
      return (await client.query<R>(command)).rows
    } finally {
      await client.end()
    }
  }

  async stop (): Promise<void> {
    if (this.#child.exitCode !== null) return
    const exited = new Promise((resolve) => this.#child.once('exit', resolve))
    this.#child.kill('SIGINT')
    await exited
  }
}
