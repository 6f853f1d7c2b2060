/**
 * Reproduces (second adversarial pass): a stream left unread on a `connection()` client when its
 * request ended (a handler that returns or throws before piping it, or one queued behind another
 * statement) crashed the process: closing it with an error emitted 'error' with nobody
 * listening (pg-query-stream, pg-copy-streams' COPY TO and COPY FROM; COPY FROM even when closed
 * without an error, from the server's answer to its CopyFail).
 * Now: a stream the plugin closes gets a listener first (nobody can read it any more); the app,
 * in a child process where a crash counts, survives and serves the next request.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { setupDatabase } from '../helpers/postgres.js'

t.setTimeout(180000)
const db = await setupDatabase(t)
await db.admin('create table t_in (n int)')
const child = fileURLToPath(new URL('./fixtures/left-stream.ts', import.meta.url))

for (const kind of ['query-stream', 'copy-to', 'copy-from', 'cursor']) {
  for (const how of (process.env.HOW ? [process.env.HOW] : ['return', 'throw', 'queued'])) {
    t.test(`${kind} left unconsumed (${how}): the process survives`, async (t) => {
      const r = spawnSync('env', ['-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', process.execPath, '--import', 'tsx', child, kind, how], { encoding: 'utf8', env: { ...process.env, DB_URL: db.url }, timeout: 20000 })
      t.match(r.stdout, /survived/, `stdout:\n${r.stdout}\nstderr:\n${r.stderr.split('\n').slice(0, 12).join('\n')}`)
      t.match(r.stdout, /next \[\{"n":42\}\]/)
    })
  }
}
