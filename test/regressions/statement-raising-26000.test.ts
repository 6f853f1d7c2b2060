/**
 * Reproduces (adversarial pass): a statement whose own execution raised SQLSTATE 26000 (a RAISE,
 * or a function EXECUTEing a missing SQL-level prepared statement) was taken for a prepared
 * statement the server had dropped, and sent again: its effects outside the transaction
 * (nextval, advisory locks, dblink) happened twice.
 * Now: only the 26000 of Bind (routine FetchPreparedStatement) is sent again.
 */
import t from 'tap'
import { buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'

const db = await setupDatabase(t)

t.test('a function that raises 26000 runs once', async (t) => {
  await db.admin('create sequence raised_26000')
  await db.admin("create function raise_26000(x int) returns int language plpgsql as $$ begin perform nextval('raised_26000'); raise sqlstate '26000' using message = 'mine'; end $$")
  const app = await buildApp(t, db, { max: 1 })
  app.get('/', async (req) => await req.db.query('select raise_26000($1)', [1]).then(() => 'ran', (e: { code?: string }) => e.code))
  t.equal((await app.inject('/')).body, '26000', "the statement's own error")
  const { rows: [row] } = await db.admin('select last_value::int as n from raised_26000')
  t.equal(row.n, 1, 'it ran once')
})
