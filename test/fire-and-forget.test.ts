/**
 * Statements a handler does not await: one issued before the reply completed still runs; one
 * issued after the end (or queued when the client aborted) is refused, and a refusal nobody
 * observes never crashes the process. Run in a child process, so a crash fails the test.
 */
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { setupDatabase } from './helpers/postgres.js'
import { runNode } from './helpers/util.js'

const db = await setupDatabase(t)

t.test('fire and forget: runs when issued in time, refused (never a crash) when late', async (t) => {
  const script = fileURLToPath(new URL('./fixtures/fire-and-forget.ts', import.meta.url))
  const child = runNode(['--import', 'tsx', script, db.url], { timeout: 30_000 })
  t.equal(child.status, 0, `the process exited normally (stderr: ${child.stderr.slice(0, 500)})`)
  const results = JSON.parse(child.stdout.trim().split('\n').pop() ?? '{}')
  t.match(results, {
    '/audit': 200,
    '/late': 200,
    '/scope': 200,
    '/client': 200,
    auditRan: true,
    lateRan: false,
    outerRan: false,
    clientRan: false,
    queuedRan: false
  })
  t.equal(results.warnings.filter((w: string) => /refused and not sent/.test(w)).length, 3, 'each refusal after the end, or out of scope, is a warn line')
})
