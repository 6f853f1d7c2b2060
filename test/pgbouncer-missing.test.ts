/**
 * The PgBouncer tests' own guard: without pgbouncer they skip with a message, except under
 * CI=true, where a missing pgbouncer must fail the run rather than pass it silently.
 */
import { spawnSync } from 'node:child_process'
import t from 'tap'

function probe (env: Record<string, string>): { status: number | null, output: string } {
  const script = "import { pgbouncerOrSkip } from './test/helpers/pgbouncer.ts'; console.log(JSON.stringify(pgbouncerOrSkip()))"
  const unset = ['NODE_OPTIONS', 'NODE_V8_COVERAGE', 'CI'].flatMap((name) => ['-u', name])
  const result = spawnSync('env', [...unset, ...Object.entries(env).map(([k, v]) => `${k}=${v}`), process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' })
  return { status: result.status, output: result.stdout + result.stderr }
}

t.test('pgbouncer missing: a skip with a clear message', async (t) => {
  const { status, output } = probe({ PGBOUNCER: '/nonexistent/pgbouncer' })
  t.equal(status, 0)
  t.match(output, /"skip":"pgbouncer is not installed \(apt-get install -y pgbouncer\); PgBouncer tests skipped"/)
})

t.test('pgbouncer missing with CI=true: a failure', async (t) => {
  const { status, output } = probe({ PGBOUNCER: '/nonexistent/pgbouncer', CI: 'true' })
  t.not(status, 0)
  t.match(output, /CI=true but pgbouncer is not installed/)
})
