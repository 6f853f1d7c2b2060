/**
 * Reproduces (adversarial pass): once the request ended when its reply was complete, an
 * `onResponse` hook (an audit insert after the reply) could no longer use `request.db` if the
 * handler had used it (FST_PG_REQUEST_ENDED), while it could if the handler had not.
 * Now: a complete reply gives the connection back if nothing needs it, without ending the
 * request: the hook's statement checks out again.
 */
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { listen, send, until } from '../helpers/util.js'

const db = await setupDatabase(t)

t.test('request.db in an onResponse hook, whether the handler used it or not', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  const seen: Record<string, unknown> = {}
  app.addHook('onResponse', async (req) => {
    seen[req.url] = await req.db.query('select $1::int as one', [1]).then((r) => r.rows[0].one, (e: { code?: string }) => e.code)
  })
  app.get('/unused', async () => 'ok')
  app.get('/used', async (req) => { await req.db.query('select 1'); return 'ok' })
  const url = await listen(app)
  t.equal(((await send(url + '/unused').done) as { status: number }).status, 200)
  t.equal(((await send(url + '/used').done) as { status: number }).status, 200)
  await until(() => Object.keys(seen).length === 2, 'both hooks ran')
  t.same(seen, { '/unused': 1, '/used': 1 })
  await until(() => app.pg.stats().active === 0, 'every connection is back')
})
