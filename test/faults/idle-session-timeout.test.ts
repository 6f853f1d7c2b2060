/** Fault 2: the server's own idle_session_timeout closes idle sessions; requests come later. */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { burst, serve, summary, type Outcome } from '../helpers/fault.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)
await db.admin(`alter database ${(await db.admin('select current_database() as d')).rows[0].d} set idle_session_timeout = '200ms'`)

t.test('idle_session_timeout 200 ms, requests spaced 300 ms apart: zero failed requests', async (t) => {
  const app = await buildApp(t, db, { max: 3 })
  const request = await serve(app)
  const outcomes: Outcome[] = []
  for (let round = 0; round < 6; round++) {
    outcomes.push(...await burst(() => request(), 6, 3))
    await sleep(300) // past the server's idle_session_timeout
  }
  const result = summary(outcomes)
  t.comment(`idle-session-timeout: ${JSON.stringify(result)}`)
  // (What failed, if anything: the code and its cause, to tell one race from another.)
  for (const o of outcomes.filter((o) => o.status >= 400)) t.comment(`failed: ${JSON.stringify(o.body)}`)
  t.equal(result.failed, 0)
  t.ok(new Set(outcomes.map((o) => o.body.pid)).size >= 6, 'sessions were closed by the server and replaced')
})
