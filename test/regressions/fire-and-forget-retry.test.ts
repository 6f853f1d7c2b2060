/**
 * Adversarial: "A statement the plugin refuses can never crash the process ... an unobserved
 * rejection is not unhandled." A fire-and-forget `retry: true` statement whose connection died
 * goes back to the queue for a new checkout; the client aborts; the plugin refuses what is
 * queued. Child process: a crash counts.
 */
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { setupDatabase } from '../helpers/postgres.js'
import { runNode } from '../helpers/util.js'

const db = await setupDatabase(t)
const script = fileURLToPath(new URL('./fixtures/retry-fire-and-forget.ts', import.meta.url))

t.test('fire-and-forget with an observer: the retried statement settles (probe)', async (t) => {
  const child = runNode(['--import', 'tsx', script, db.url, '/ff'], { timeout: 30_000 })
  t.equal(child.status, 0, `the process exited normally (stderr: ${child.stderr.slice(0, 800)})`)
  t.match(child.stdout, /rejected \(observed\)/)
})

t.test('regression, was: "never crash" broken: an unobserved fire-and-forget retry:true statement, refused after the client aborted while it waited for its new connection, is an unhandled rejection that kills the process', async (t) => {
  const child = runNode(['--import', 'tsx', script, db.url, '/ff-bare'], { timeout: 30_000 })
  t.equal(child.status, 0, `the process exited normally (stderr: ${child.stderr.slice(0, 800)})`)
})
