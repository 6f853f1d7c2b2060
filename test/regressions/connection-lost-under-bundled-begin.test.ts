/**
 * Reproduces (adversarial pass): the backend was terminated while a route transaction's first
 * statement ran, sent in one batch with its BEGIN. pg had read no status since (its last
 * ReadyForQuery came before the batch), so the plugin's ROLLBACK was planned from `idle`: the
 * reply said FST_PG_TRANSACTION_ENDED_EARLY ("work before it may have been committed") and a
 * warning said the same. Nothing was committed: the connection was lost.
 * Now: on a connection known lost, nothing is planned from its status; the ROLLBACK is not sent,
 * and the reply carries the lost connection.
 */
import t from 'tap'
import { appBackends, assertReturned, buildApp } from '../helpers/app.js'
import { code, ledger, tx } from '../helpers/ledger.js'
import { setupDatabase } from '../helpers/postgres.js'
import { until } from '../helpers/util.js'

const db = await setupDatabase(t)
const { notes } = await ledger(t, db)

t.test('the backend terminated under the first statement of a route transaction', async (t) => {
  const app = await buildApp(t, db, { max: 1 })
  let seen: unknown
  let running = false
  app.post('/', tx, async (req) => {
    running = true
    try {
      return (await req.db.query('with i as (insert into ledger values ($1) returning 1) select pg_sleep(5) from i', ['x'])).rowCount
    } catch (error) {
      seen = code(error)
      throw error
    }
  })
  const reply = app.inject({ method: 'POST', url: '/' })
  await until(() => running, 'the handler runs')
  await until(async () => (await db.admin("select count(*)::int as n from pg_stat_activity where query like 'with i as%' and state = 'active' and pid <> pg_backend_pid()")).rows[0].n === 1, 'the statement runs')
  for (const { pid } of await appBackends(db)) await db.admin('select pg_terminate_backend($1)', [pid])
  const res = await reply
  t.equal(seen, 'FST_PG_CONNECTION_LOST')
  t.equal(res.json().code, 'FST_PG_CONNECTION_LOST', res.body)
  t.same(await notes(), [], 'nothing committed')
  await assertReturned(t, app, db)
})
