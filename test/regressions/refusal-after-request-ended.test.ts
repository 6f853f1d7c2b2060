/**
 * Reproduces: `void req.db.connection()` / `void req.db.transaction(fn)` on a request that
 * already ended. The refusal (FST_PG_REQUEST_ENDED) was rethrown from an async function, a new
 * promise nobody observed: an unhandled rejection, which crashes the process (Node's default).
 * Now: a refusal nobody observes never crashes the process; a caller that awaits still gets
 * FST_PG_REQUEST_ENDED. Run in a child process, so a crash is counted (fixtures/request-ended-refusals.ts).
 */
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { setupDatabase } from '../helpers/postgres.js'
import { runNode } from '../helpers/util.js'

const db = await setupDatabase(t)
const script = fileURLToPath(new URL('./fixtures/request-ended-refusals.ts', import.meta.url))

for (const call of ['connection', 'transaction']) {
  t.test(`void req.db.${call}() on a request that already ended: no crash, an awaiting caller gets FST_PG_REQUEST_ENDED`, async (t) => {
    const child = runNode(['--import', 'tsx', script, db.url, call], { timeout: 30_000 })
    t.equal(child.status, 0, `the process exited normally (stderr: ${child.stderr.slice(0, 800)})`)
    if (child.status !== 0) return
    const result = JSON.parse(child.stdout.trim().split('\n').pop() ?? '{}')
    t.same(result, { statusCode: 200, awaited: 'FST_PG_REQUEST_ENDED' })
  })
}
