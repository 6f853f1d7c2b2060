/**
 * The published declarations (built by `npm run build`, which `npm test` runs first) compile in a
 * user's project with `skipLibCheck: false`: node16 ESM, node16 CommonJS and bundler resolution.
 * `skipLibCheck` would hide a broken .d.ts from us and show it to every user without the flag.
 * Each consumer is a tiny project in a temporary folder that imports the package by name through
 * package.json "exports", as a user's would; the three compile in parallel (each takes seconds).
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, isAbsolute, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const root = fileURLToPath(new URL('..', import.meta.url))

if (!existsSync(join(root, 'dist/esm/index.d.ts')) || !existsSync(join(root, 'dist/cjs/index.d.ts'))) {
  throw new Error('dist/ is missing: run `npm run build` (npm test does) before the tests')
}

// Three full checks of fastify's and Node's declarations take a while on a loaded machine.
t.setTimeout(240_000)

/** What the consumer does with the package: the API a user touches first. */
const body = `
export async function main (): Promise<void> {
  const app = Fastify()
  await app.register(pgPool, { connectionString: 'postgres://localhost/app', max: 10, acquireTimeoutMs: 2000, maxWaiting: 20 })
  app.get('/', async (request) => {
    const result: QueryResult<{ id: number }> = await request.db.query<{ id: number }>('select $1::int as id', [1])
    const id: number | undefined = result.rows[0]?.id
    return { id }
  })
  await app.register(pgPool, { name: 'replica', connectionString: 'postgres://replica/app' })
  app.get('/feed', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (request) => {
    const feed: QueryResult = await request.db.query('select 1')
    const main: QueryResult = await request.dbs.default.query('select 1')
    const same: QueryResult = await request.dbs.replica.query('select 1')
    return { n: feed.rowCount, m: main.rowCount, s: same.rowCount }
  })
  const replicaStats: PoolStats = app.pg.replica.stats()
  console.log(replicaStats)
  const client: PoolClient = await app.pg.pool.connect()
  client.release()
  const stats: PoolStats = app.pg.stats()
  console.log(stats)
  try {
    await app.pg.query('select 1')
  } catch (error) {
    if (error instanceof PgAcquireTimeoutError) {
      const code: 'FST_PG_ACQUIRE_TIMEOUT' = error.code
      const statusCode: 503 = error.statusCode
      console.log(code, statusCode, error.message)
    }
    if (error instanceof PgConnectionLostError) {
      const statusCode: 500 | 503 = error.statusCode
      console.log(error.code, statusCode)
    }
  }
  await app.close()
}
`

const imports = `import Fastify from 'fastify'
import type { PoolClient, QueryResult } from 'pg'
import pgPool, { PgAcquireTimeoutError, PgConnectionLostError, type PoolStats } from 'fastify-pg-pool'

declare module 'fastify-pg-pool' {
  interface PgDatabases { replica: true }
}
`

interface Setup {
  /** The package.json "type" of the consumer, which decides how node16 reads its .ts files. */
  type: 'module' | 'commonjs'
  compilerOptions: Record<string, string>
  source: string
  /** The build whose declarations the "exports" conditions must pick. */
  build: 'esm' | 'cjs'
}

const setups: Record<string, Setup> = {
  'node16 ESM': {
    type: 'module',
    compilerOptions: { module: 'node16', moduleResolution: 'node16' },
    source: imports + body + 'await main()\n',
    build: 'esm'
  },
  'node16 CommonJS': {
    type: 'commonjs',
    compilerOptions: { module: 'node16', moduleResolution: 'node16' },
    // `import` compiles to require() here; `import = require()` is the module object itself.
    source: imports + "import pgPoolModule = require('fastify-pg-pool')\n" + body +
      'export const registered = Fastify().register(pgPoolModule.pgPool, { max: 1 })\n' +
      'main().catch(console.error)\n',
    build: 'cjs'
  },
  'bundler resolution': {
    type: 'module',
    compilerOptions: { module: 'esnext', moduleResolution: 'bundler' },
    source: imports + body + 'await main()\n',
    build: 'esm'
  }
}

const workspace = mkdtempSync(join(tmpdir(), 'fastify-pg-pool-declarations-'))
t.teardown(() => rmSync(workspace, { recursive: true, force: true }))

/**
 * The consumer's node_modules links this repository as `fastify-pg-pool` and the packages the
 * consumer imports itself. TypeScript follows the links to their real paths, so the package's own
 * imports (@fastify/error, pg's types) resolve from this repository's node_modules, as installed.
 */
function consumer (name: string, setup: Setup): string {
  const dir = join(workspace, name.replace(/\W+/g, '-'))
  const link = (target: string, at: string) => {
    mkdirSync(dirname(join(dir, 'node_modules', at)), { recursive: true })
    symlinkSync(target, join(dir, 'node_modules', at), 'dir')
  }
  link(root, 'fastify-pg-pool')
  for (const dep of ['fastify', 'pg', '@types/pg', '@types/node']) link(join(root, 'node_modules', dep), dep)
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: setup.type }))
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      target: 'es2022',
      // A Node project's libraries, without the DOM: checking lib.dom.d.ts would double the time.
      lib: ['es2022'],
      strict: true,
      skipLibCheck: false,
      // Skips TypeScript's own lib.*.d.ts only; every package's declarations are still checked.
      skipDefaultLibCheck: true,
      noEmit: true,
      ...setup.compilerOptions
    },
    files: ['index.ts']
  }, null, 2))
  writeFileSync(join(dir, 'index.ts'), setup.source)
  return dir
}

interface Run { status: number | null, stdout: string, stderr: string }

/** tsc in its own process, without tap's coverage (it would record all of TypeScript). */
function tsc (project: string): Promise<Run> {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  delete env.NODE_V8_COVERAGE
  const args = [join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '--listFiles', '-p', project]
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { env })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    child.on('error', (error) => resolve({ status: null, stdout, stderr: String(error) }))
    child.on('close', (status) => resolve({ status, stdout, stderr }))
  })
}

for (const [name, setup] of Object.entries(setups)) {
  const run = tsc(consumer(name, setup))
  t.test(`${name}: the declarations compile with skipLibCheck: false`, async (t) => {
    const { status, stdout, stderr } = await run
    // --listFiles prints one absolute path a line; the rest is the diagnostics.
    const lines = stdout.split('\n')
    const files = new Set(lines.filter((line) => isAbsolute(line) && !line.includes('): ')))
    const diagnostics = lines.filter((line) => !files.has(line)).join('\n').trim()
    t.equal(status, 0, 'tsc exits 0', { diagnostics, stderr })
    const other = setup.build === 'esm' ? 'cjs' : 'esm'
    t.ok(files.has(join(root, `dist/${setup.build}/index.d.ts`)), `"exports" gives dist/${setup.build}`)
    t.notOk([...files].some((file) => file.startsWith(join(root, `dist/${other}`)) || file.startsWith(join(root, 'src'))),
      `nothing from dist/${other} or src`)
  })
}
