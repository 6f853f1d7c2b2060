/**
 * A transaction never reports a success PostgreSQL did not commit: a failure `fn` swallowed,
 * two transactions started at once in one request, statements from outside `fn`, and the
 * transaction control an ORM (or a raw string) sends inside the plugin's transactions.
 */
import { Kysely, PostgresDialect, sql } from 'kysely'
import Fastify from 'fastify'
import pg from 'pg'
import t from 'tap'
import pgPool, { type RequestDb } from '../src/index.js'
import { assertReturned, buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'
import { code, ledger, tx } from './helpers/ledger.js'
import { logLines } from './helpers/util.js'

const db = await setupDatabase(t)
const { notes, insert } = await ledger(t, db, { unique: true })

/** Kysely on `request.db`: each of its queries is a request.db.query() call. */
function kyselyOn (reqDb: RequestDb): Kysely<any> {
  const client = { query: (text: string, values: unknown[]) => reqDb.query(text, values), release () {} }
  return new Kysely<any>({ dialect: new PostgresDialect({ pool: { connect: async () => client, end: async () => {} } as never }) })
}

t.test('transaction(): a failure fn swallowed rejects FST_PG_TRANSACTION_ABORTED, nothing committed', async (t) => {
  await db.admin('insert into ledger values (\'taken\')')
  const app = await buildApp(t, db)
  let outcome: unknown
  app.post('/', async (req, reply) => {
    outcome = await req.db.transaction(async (tx) => {
      await tx.query(insert('mine'))
      await tx.query(insert('taken')).catch(() => 'duplicate key: ignored')
      return 'created'
    }).catch(code)
    return reply.code(outcome === 'created' ? 201 : 409).send({ outcome })
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(outcome, 'FST_PG_TRANSACTION_ABORTED')
  t.equal(res.statusCode, 409, 'the route did not answer 201')
  t.same(await notes(), ['taken'], "'mine' was not committed")
  await assertReturned(t, app, db)
})

t.test('a nested level whose failure fn swallowed is rolled back to its savepoint and reported the same way', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => await req.db.transaction(async (tx) => {
    await tx.query(insert('outer'))
    const inner = await tx.transaction(async (inner) => {
      await inner.query(insert('inner'))
      await inner.query('select 1 / 0').catch(() => 'swallowed')
      return 'inner done'
    }).catch(code)
    // The outer transaction is usable again: the inner level was rolled back to its savepoint.
    await tx.query(insert('after'))
    return { inner }
  }))
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(res.json(), { inner: 'FST_PG_TRANSACTION_ABORTED' })
  t.same(await notes(), ['after', 'outer'])
  await assertReturned(t, app, db)
})

t.test('two transactions started at once: never interleaved; the second is refused, the first commits', async (t) => {
  const app = await buildApp(t, db)
  let outcomes: unknown[] = []
  app.post('/', async (req) => {
    const results = await Promise.allSettled([
      req.db.transaction(async (tx) => { await tx.query(insert('a1')); await tx.query(insert('a2')) }),
      req.db.transaction(async (tx) => { await tx.query(insert('b1')); throw new Error('b fails') })
    ])
    outcomes = results.map((r) => r.status === 'fulfilled' ? 'committed' : code(r.reason))
    return 'ok'
  })
  await app.inject({ method: 'POST', url: '/' })
  t.same(outcomes, ['committed', 'FST_PG_TRANSACTION_SCOPE'])
  t.same(await notes(), ['a1', 'a2'], 'the refused one sent nothing; the failure of one cannot roll back the other')
  await assertReturned(t, app, db)
})

t.test('one after the other they both run', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => {
    await req.db.transaction(async (tx) => { await tx.query(insert('a')) })
    await req.db.transaction(async (tx) => { await tx.query(insert('b')) })
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  t.same(await notes(), ['a', 'b'])
})

t.test('request.db while a transaction is open: refused, never run inside it', async (t) => {
  const app = await buildApp(t, db)
  const seen: Record<string, unknown> = {}
  app.post('/', async (req) => {
    const outside = req.db.transaction(async (tx) => {
      await tx.query(insert('inside'))
      // The usual slip: the outer db inside fn. Refused at once, not a deadlock, not a join.
      seen.insideFn = await req.db.query(insert('slip')).catch(code)
      await new Promise((resolve) => setTimeout(resolve, 20))
      throw new Error('rolled back')
    }).catch(() => 'rolled back')
    // Concurrently, from outside fn.
    seen.concurrent = await req.db.query(insert('concurrent')).catch(code)
    seen.connection = await req.db.connection().catch(code)
    seen.nested = await req.db.transaction(async () => 'x').catch(code)
    await outside
    seen.after = (await req.db.query(insert('after'))).rowCount
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  t.same(seen, { insideFn: 'FST_PG_TRANSACTION_SCOPE', concurrent: 'FST_PG_TRANSACTION_SCOPE', connection: 'FST_PG_TRANSACTION_SCOPE', nested: 'FST_PG_TRANSACTION_SCOPE', after: 1 })
  t.same(await notes(), ['after'], 'none of the refused statements ran, inside or outside')
  await assertReturned(t, app, db)
})

t.test("a transaction's db after it ended refuses; one left running by its parent is rolled back", async (t) => {
  const app = await buildApp(t, db)
  const seen: unknown[] = []
  let kept: RequestDb | undefined
  app.post('/', async (req) => {
    await req.db.transaction(async (tx) => {
      kept = tx
      await tx.query(insert('outer'))
      // Not awaited: still open when the outer one commits. It did not finish: rolled back.
      tx.transaction(async (inner) => {
        await inner.query(insert('unfinished'))
        await new Promise((resolve) => setTimeout(resolve, 30))
        seen.push(await inner.query(insert('too late')).catch(code))
      }).catch((error: unknown) => seen.push(code(error)))
      await new Promise((resolve) => setTimeout(resolve, 10))
    })
    seen.push(await (kept as RequestDb).query('select 1').catch(code))
    await new Promise((resolve) => setTimeout(resolve, 40))
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  t.same(seen, ['FST_PG_TRANSACTION_SCOPE', 'FST_PG_TRANSACTION_SCOPE', 'FST_PG_TRANSACTION_SCOPE'])
  t.same(await notes(), ['outer'])
  await assertReturned(t, app, db)
})

// What ORMs and hand-written code send, in the forms PostgreSQL accepts.
const BEGINS = ['begin', 'BEGIN;', '  Begin Transaction ', 'begin work', '/* orm */ begin', '-- tx\nstart transaction isolation level serializable', 'START TRANSACTION READ WRITE']
const COMMITS = ['commit', 'COMMIT;', 'commit work', 'end', 'END TRANSACTION', '/* x */ commit -- done', 'commit and no chain']
const ROLLBACKS = ['rollback', 'ROLLBACK;', 'abort', 'rollback work', '/* x */ Rollback Transaction']

t.test('transaction control inside transaction(): BEGIN/COMMIT/ROLLBACK nest as savepoints', async (t) => {
  const app = await buildApp(t, db)
  app.post('/:i', async (req) => {
    const i = Number((req.params as { i: string }).i)
    const begin = BEGINS[i % BEGINS.length] as string
    return await req.db.transaction(async (tx) => {
      await tx.query(begin)
      await tx.query(insert(`rolled back ${i}`))
      await tx.query(ROLLBACKS[i % ROLLBACKS.length] as string)
      await tx.query(begin)
      await tx.query(insert(`released ${i}`))
      await tx.query(COMMITS[i % COMMITS.length] as string)
      // Still inside the plugin's transaction: nothing above was committed on its own.
      // (an xid is assigned by the first write and lasts until the transaction ends)
      return (await tx.query('select pg_current_xact_id_if_assigned() is not null as "inTransaction"')).rows[0]
    })
  })
  for (let i = 0; i < BEGINS.length; i++) {
    t.same((await app.inject({ method: 'POST', url: `/${i}` })).json(), { inTransaction: true }, `forms ${i}`)
  }
  t.same(await notes(), BEGINS.map((_, i) => `released ${i}`).sort())
  await assertReturned(t, app, db)
})

t.test('an ORM transaction inside a route transaction, then the handler throws: nothing is committed', async (t) => {
  const app = await buildApp(t, db)
  app.post('/kysely', tx, async (req) => {
    const orm = kyselyOn(req.db)
    await orm.transaction().execute(async (trx) => {
      await sql`insert into ledger values ('kysely')`.execute(trx)
    })
    throw new Error('the handler fails after the ORM committed')
  })
  app.post('/raw', tx, async (req) => {
    await req.db.query('BEGIN')
    await req.db.query(insert('raw'))
    await req.db.query('COMMIT')
    return await Promise.reject(new Error('fails after'))
  })
  app.post('/client', tx, async (req) => {
    const client = await req.db.connection()
    await client.query('begin')
    await client.query(insert('client'))
    await client.query('commit')
    throw new Error('fails after')
  })
  for (const url of ['/kysely', '/raw', '/client']) {
    t.equal((await app.inject({ method: 'POST', url })).statusCode, 500, url)
  }
  t.same(await notes(), [], 'a 5xx commits nothing')
  await assertReturned(t, app, db)
})

t.test('an ORM transaction inside a route transaction that succeeds: committed with the route', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', tx, async (req) => {
    const orm = kyselyOn(req.db)
    // Kysely's controlled transaction, with its own savepoints inside the plugin's savepoint.
    const trx = await orm.startTransaction().execute()
    await sql`insert into ledger values ('kept')`.execute(trx)
    const sp = await trx.savepoint('sp').execute()
    await sql`insert into ledger values ('undone')`.execute(sp)
    await sp.rollbackToSavepoint('sp').execute()
    await trx.commit().execute()
    await orm.transaction().execute(async (trx) => {
      await sql`insert into ledger values ('rolled back')`.execute(trx)
      throw new Error('the ORM rolls back its own part')
    }).catch(() => 'caught')
    return { outside: (await db.admin('select count(*)::int as n from ledger')).rows[0].n }
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { outside: 0 }, 'nothing visible before the route commits')
  t.same(await notes(), ['kept'])
  await assertReturned(t, app, db)
})

t.test('a failed statement inside the ORM transaction: its ROLLBACK (or COMMIT, as PostgreSQL does) undoes only its part', async (t) => {
  await db.admin('insert into ledger values (\'taken\')')
  const app = await buildApp(t, db)
  app.post('/:end', tx, async (req) => {
    await req.db.query(insert(`route ${(req.params as { end: string }).end}`))
    await req.db.query('begin')
    await req.db.query(insert('orm'))
    await req.db.query(insert('taken')).catch(() => 'duplicate')
    const { end } = req.params as { end: string }
    const { command } = await req.db.query(end)
    await req.db.query(insert(`${end} answered ${command}`))
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/rollback' })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: '/commit' })).statusCode, 200)
  // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK; so does the savepoint.
  t.same(await notes(), ['commit answered ROLLBACK', 'rollback answered ROLLBACK', 'route commit', 'route rollback', 'taken'])
  await assertReturned(t, app, db)
})

t.test('control that would end the plugin\'s transaction is refused with FST_PG_TRANSACTION_CONTROL', async (t) => {
  const app = await buildApp(t, db)
  const refused: Record<string, unknown> = {}
  app.post('/', tx, async (req) => {
    await req.db.query(insert('route'))
    for (const statement of ['commit', 'rollback', 'end', 'prepare transaction \'x\'', 'begin; insert into ledger values (\'x\')', 'insert into ledger values (\'y\'); commit', '-- c\rcommit', '/* a /* b */ c */ commit', 'commit and chain']) {
      refused[statement] = await req.db.query(statement).catch(code)
    }
    const client = await req.db.connection()
    refused.client = await client.query('commit').catch(code)
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  for (const [statement, outcome] of Object.entries(refused)) t.equal(outcome, 'FST_PG_TRANSACTION_CONTROL', statement)
  t.same(await notes(), ['route'], 'the route transaction committed as a whole')
  await assertReturned(t, app, db)
})

t.test('outside the plugin\'s transactions the user\'s control is sent as it is', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => {
    await req.db.query('begin')
    await req.db.query(insert('mine'))
    const { command } = await req.db.query('commit')
    return { command }
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { command: 'COMMIT' })
  t.same(await notes(), ['mine'])
})

t.test('last line of defence: a transaction found ended when the plugin ends it fails the request, with a warn log', async (t) => {
  const { stream, lines } = logLines()
  const app = Fastify({ logger: { level: 'warn', stream } })
  await app.register(pgPool, { connectionString: db.url })
  t.teardown(() => app.close())
  // Every way through request.db and connection() is read and rewritten; a library that calls
  // pg's own Client.prototype.query on the client is not.
  const rawCommit = async (client: pg.PoolClient): Promise<unknown> => await (pg.Client.prototype.query as (text: string) => Promise<unknown>).call(client, 'commit')
  app.post('/route', tx, async (req) => {
    await req.db.query(insert('a'))
    await rawCommit(await req.db.connection())
    await req.db.query(insert('b'))
    return { ok: true }
  })
  app.post('/refused', tx, async (req, reply) => {
    await req.db.query(insert('d'))
    await rawCommit(await req.db.connection())
    return reply.code(409).send({ conflict: true })
  })
  let rejected: unknown
  app.post('/fn', async (req) => {
    rejected = await req.db.transaction(async (tx) => {
      await tx.query(insert('c'))
      await rawCommit(await tx.connection())
      throw new Error('validation failed')
    }).catch((error: { code?: unknown, cause?: { message?: unknown } }) => [error.code, error.cause?.message])
    return 'ok'
  })
  const res = await app.inject({ method: 'POST', url: '/route' })
  t.equal(res.statusCode, 500, 'never a silent success')
  t.equal(res.json().code, 'FST_PG_TRANSACTION_ENDED_EARLY')
  const refused = await app.inject({ method: 'POST', url: '/refused' })
  t.equal(refused.json().code, 'FST_PG_TRANSACTION_ENDED_EARLY', 'a 4xx too: its rollback had nothing left to undo')
  await app.inject({ method: 'POST', url: '/fn' })
  t.same(rejected, ['FST_PG_TRANSACTION_ENDED_EARLY', 'validation failed'], "not fn's error alone: that would claim a rollback")
  t.same(await notes(), ['a', 'b', 'c', 'd'], 'what the error warns of')
  t.equal(lines.filter((l) => l.level === 40 && /already ended/.test(l.msg)).length, 3, 'a warn line each')
})

t.test('transaction() after the user began one: a savepoint, the user\'s transaction stays theirs', async (t) => {
  const app = await buildApp(t, db)
  app.post('/', async (req) => {
    await req.db.query('begin')
    await req.db.transaction(async (tx) => { await tx.query(insert('inner')) })
    await req.db.query('rollback')
    return 'ok'
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  t.same(await notes(), [], "the user's rollback undid the inner transaction too")
  await assertReturned(t, app, db)
})
