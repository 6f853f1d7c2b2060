/**
 * Which statements the plugin prepares, and which server errors mean a prepared statement went
 * stale: read from the statement and the error alone (the server's side is in
 * prepared-statements.test.ts).
 */
import t from 'tap'
import { preparable, staleStatement } from '../src/prepare.js'

t.test('preparable(): statements with parameters, not named, not cursors, not opted out', async (t) => {
  const text = 'select $1::int'
  t.equal(preparable(text, [1]), text, 'a string with values')
  t.equal(preparable(text, []), undefined, 'no values')
  t.equal(preparable(text, undefined), undefined)
  t.equal(preparable({ text, values: [1] }, undefined), text, 'a config with values')
  t.equal(preparable({ text }, [1]), text, 'a config, values beside it (pg takes those)')
  t.equal(preparable({ text, values: [1] }, []), undefined, 'values beside it win, as in pg')
  t.equal(preparable({ text, values: [1], name: 'mine' }, undefined), undefined, 'named by the user')
  t.equal(preparable({ text, values: [1], prepare: false }, undefined), undefined, 'prepare: false')
  t.equal(preparable({ text, values: [1], queryMode: 'simple' }, undefined), undefined, 'simple protocol asked for')
  t.equal(preparable({ text, values: [1], submit () {} }, undefined), undefined, 'a cursor or stream')
  t.equal(preparable({ name: 'only-a-name', values: [1] }, undefined), undefined, 'no text')
  t.equal(preparable(null, [1]), undefined)
  t.equal(preparable(42, [1]), undefined)
})

t.test('staleStatement(): 26000 at Bind and the 0A000 of plan revalidation (sent again); a value pg could not serialise (closed by pg)', async (t) => {
  const error = (fields: object): Error => Object.assign(new Error('x'), fields)
  t.same(staleStatement(error({ code: '26000', routine: 'FetchPreparedStatement', severity: 'ERROR' })), { gone: true, resend: true })
  t.same(staleStatement(error({ code: '0A000', routine: 'RevalidateCachedQuery', severity: 'ERROR' })), { gone: false, resend: true })
  t.equal(staleStatement(error({ code: '26000', routine: 'exec_stmt_raise', severity: 'ERROR' })), undefined, 'raised by the statement itself: it ran')
  t.equal(staleStatement(error({ code: '0A000', routine: 'transformSelectStmt', severity: 'ERROR' })), undefined, 'another feature not supported')
  t.equal(staleStatement(error({ code: '42P01', severity: 'ERROR' })), undefined)
  t.same(staleStatement(new TypeError('Do not know how to serialize a BigInt')), { gone: true, resend: false }, 'no server severity: pg closed the statement')
  t.equal(staleStatement(error({ code: 'ECONNRESET' })), undefined, 'a socket error')
})
