/**
 * The package as users install it (built by `npm run build`, which `npm test` runs first):
 * default and named export from ESM and CommonJS, resolved by name through package.json
 * "exports". Each form runs in its own process.
 */
import { existsSync } from 'node:fs'
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
