/**
 * Adversarial: transaction control inside the plugin's transactions. The README promises that
 * COMMIT/ROLLBACK of a transaction the user did not begin is refused (FST_PG_TRANSACTION_CONTROL)
 * "reading comments, case and whitespace", that a 5xx commits nothing, and that a transaction
 * found ended early is reported as FST_PG_TRANSACTION_ENDED_EARLY. (A COMMIT inside a
 * multi-statement string is now refused up front.)
 */
import t from 'tap'
import { assertReturned, buildApp } from '../helpers/app.js'
import { setupDatabase } from '../helpers/postgres.js'
import { code, ledger, tx } from '../helpers/ledger.js'

const db = await setupDatabase(t)
const { notes, insert } = await ledger(t, db, { unique: true })

// PostgreSQL reads both as a plain COMMIT: a -- comment ends at \r as well as \n, and block
// comments nest (/* a /* b */ c */ is one comment).
const hidden: Array<[string, string]> = [
  ['a -- comment ended by \\r', '-- the ORM says\rcommit'],
  ['a nested block comment', '/* outer /* inner */ still a comment */ commit']
]

for (const [name, statement] of hidden) {
  t.test(`regression, was: FST_PG_TRANSACTION_CONTROL broken: COMMIT after ${name} inside a route transaction is sent and commits; the 5xx that follows commits`, async (t) => {
    const app = await buildApp(t, db)
    let outcome: unknown
    app.post('/', tx, async (req) => {
      await req.db.query(insert('before'))
      outcome = await req.db.query(statement).then((r) => r.command, code)
      await req.db.query(insert('after')).catch(() => {})
      throw new Error('the handler fails: nothing may be committed')
    })
    const res = await app.inject({ method: 'POST', url: '/' })
    t.equal(outcome, 'FST_PG_TRANSACTION_CONTROL', 'refused, not sent')
    t.equal(res.statusCode, 500)
    t.same(await notes(), [], 'a 5xx commits nothing')
    await assertReturned(t, app, db)
  })

  t.test(`regression, was: FST_PG_TRANSACTION_CONTROL broken: COMMIT after ${name} inside transaction(fn) escapes it`, async (t) => {
    const app = await buildApp(t, db)
    let outcome: unknown
    let result: unknown
    app.post('/', async (req) => {
      result = await req.db.transaction(async (tx) => {
        await tx.query(insert('before'))
        outcome = await tx.query(statement).then((r) => r.command, code)
        throw new Error('fn fails: roll back')
      }).catch((e: Error) => (e as { code?: string }).code ?? e.message)
      return 'ok'
    })
    await app.inject({ method: 'POST', url: '/' })
    t.equal(outcome, 'FST_PG_TRANSACTION_CONTROL', 'refused, not sent')
    t.same(await notes(), [], 'the rejected transaction committed nothing')
    t.equal(result, 'fn fails: roll back')
    await assertReturned(t, app, db)
  })
}

t.test('a multi-statement string with a COMMIT inside transaction(fn) is refused, not sent: nothing commits', async (t) => {
  const app = await buildApp(t, db)
  let refused: unknown
  let result: unknown
  app.post('/', async (req) => {
    result = await req.db.transaction(async (tx) => {
      await tx.query(insert('kept out'))
      refused = await tx.query(`${insert('a')}; commit`).catch((e: { code?: string }) => e.code)
      throw new Error('validation failed')
    }).then(() => 'resolved', (e: Error) => e.message)
    return { result }
  })
  await app.inject({ method: 'POST', url: '/' })
  t.equal(refused, 'FST_PG_TRANSACTION_CONTROL')
  t.equal(result, 'validation failed', "fn's error: the rollback did happen")
  t.same(await notes(), [], 'nothing committed')
  await assertReturned(t, app, db)
})

t.test('"a 5xx commits nothing": `...; commit; begin` inside a route transaction is refused, and the 500 commits nothing', async (t) => {
  const app = await buildApp(t, db)
  let refused: unknown
  app.post('/', tx, async (req) => {
    refused = await req.db.query(`${insert('a')}; commit; begin`).catch((e: { code?: string }) => e.code)
    await req.db.query(insert('b'))
    throw new Error('the handler fails')
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(refused, 'FST_PG_TRANSACTION_CONTROL')
  t.equal(res.statusCode, 500)
  t.same(await notes(), [], 'a 5xx commits nothing')
  await assertReturned(t, app, db)
})
