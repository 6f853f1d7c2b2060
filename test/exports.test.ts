/**
 * The package as users install it (built by `npm run build`, which `npm test` runs first):
 * default and named export from ESM and CommonJS, resolved by name through package.json
 * "exports". Each form runs in its own process.
 */
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import * as source from '../src/index.js'
import { runNode } from './helpers/util.js'

if (!existsSync(new URL('../dist/cjs/index.js', import.meta.url))) {
  throw new Error('dist/ is missing: run `npm run build` (npm test does) before the tests')
}

function load (fixture: string): Record<string, unknown> {
  const file = fileURLToPath(new URL(`./fixtures/${fixture}`, import.meta.url))
  const child = runNode([file])
  if (child.status !== 0) throw new Error(`${fixture} failed: ${child.stderr}`)
  return JSON.parse(child.stdout)
}

const meta = { name: 'fastify-pg-pool', fastify: '5.x' }

t.test('ESM: default and named export are the plugin', async (t) => {
  t.match(load('exports.mjs'), {
    defaultIsFunction: true,
    defaultIsNamed: true,
    errorExported: true,
    meta,
    registered: true
  })
})

t.test('CommonJS: require() gives .pgPool and .default, and the module registers as is', async (t) => {
  t.match(load('exports.cjs'), {
    namedIsFunction: true,
    defaultIsNamed: true,
    errorExported: true,
    meta,
    registered: [true, true]
  })
})

t.test('the source exports the same shape', async (t) => {
  t.equal(source.default, source.pgPool)
  t.match((source.pgPool as unknown as Record<symbol, unknown>)[Symbol.for('plugin-meta')], meta)
})

t.test('the published declarations keep the pool internals out (stripInternal)', async (t) => {
  for (const build of ['esm', 'cjs']) {
    const declared = readFileSync(new URL(`../dist/${build}/pool.d.ts`, import.meta.url), 'utf8')
    t.match(declared, /interface PgPool\b/, `${build}: the public interface is there`)
    for (const internal of ['acquire', 'release', 'wire', 'leakDetection', 'shed', 'saturated', 'windDown']) {
      t.notMatch(declared, new RegExp(`^\\s*(readonly )?${internal}\\b`, 'm'), `${build}: no ${internal}`)
    }
  }
})
