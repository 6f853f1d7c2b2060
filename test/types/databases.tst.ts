import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import pgPool, { type PgDecorator, type RequestDb } from '../../src/index.js'

// What a user writes once: the names of their further databases.
declare module '../../src/index.js' {
  interface PgDatabases { replica: true }
}

const app = Fastify()
app.register(pgPool, { connectionString: 'postgres://localhost/db' })
app.register(pgPool, { name: 'replica', connectionString: 'postgres://replica/db' })

test('declared names: fastify.pg.<name>, request.dbs.<name>, a route\'s db and fallback', () => {
  expect(app.pg.replica).type.toBe<PgDecorator>()
  expect(app.pg.replica.query('select 1')).type.not.toRaiseError()
  app.get('/', { config: { pgPool: { db: 'replica', fallback: 'default' } } }, async (req) => {
    expect(req.db).type.toBe<RequestDb>()
    expect(req.dbs.replica).type.toBe<RequestDb>()
    expect(req.dbs.default).type.toBe<RequestDb>()
    return 'ok'
  })
})

test('an undeclared name is a compile error', () => {
  expect(app.pg).type.not.toHaveProperty('replcia')
  app.get('/', async (req) => {
    expect(req.dbs).type.not.toHaveProperty('replcia')
    return 'ok'
  })
  expect(app.register(pgPool, { name: 'replcia' })).type.toRaiseError()
  expect(app.get('/', { config: { pgPool: { db: 'replcia' } } }, async () => 'ok')).type.toRaiseError()
  expect(app.get('/', { config: { pgPool: { fallback: 'primary' } } }, async () => 'ok')).type.toRaiseError()
})
