/**
 * Options are validated once, at register time: a wrong type or range fails with
 * FST_PG_INVALID_OPTION naming the option and the value received, and never echoes a password.
 */
import Fastify from 'fastify'
import t from 'tap'
import pgPool, { PgInvalidOptionError, type PgPoolOptions } from '../src/index.js'

async function registerError (options: unknown): Promise<Error & { code?: string }> {
  const app = Fastify()
  try {
    await app.register(pgPool, options as PgPoolOptions)
    await app.ready()
  } catch (error) {
    return error as Error
  } finally {
    await app.close()
  }
  throw new Error('register did not fail')
}

const cases: Array<[PgPoolOptions | unknown, RegExp]> = [
  [{ max: 0 }, /`max`.*whole number of at least 1.*`0` \(number\)/],
  [{ max: '10' }, /`max`.*`10` \(string\)/],
  [{ max: 2.5 }, /`max`.*`2\.5` \(number\)/],
  [{ min: 5, max: 2 }, /`min`.*at most `max` \(2\).*`5` \(number\)/],
  [{ pingIdleMs: -1 }, /`pingIdleMs`.*or false.*`-1` \(number\)/],
  [{ pingIdleMs: 2 ** 31 }, /`pingIdleMs`.*at most|to 2147483647.*`2147483648` \(number\)/],
  [{ pingIdleMs: true }, /`pingIdleMs`.*`true` \(boolean\)/],
  [{ pingTimeoutMs: 0 }, /`pingTimeoutMs`.*above 0.*`0` \(number\)/],
  [{ acquireTimeoutMs: Infinity }, /`acquireTimeoutMs`.*`Infinity` \(number\)/],
  [{ acquireTimeoutMs: null }, /`acquireTimeoutMs`.*`null` \(null\)/],
  [{ closeTimeoutMs: NaN }, /`closeTimeoutMs`.*`NaN` \(number\)/],
  [{ closeTimeoutMs: 3e9 }, /`closeTimeoutMs`.*to 2147483647.*`3000000000` \(number\)/],
  [{ maxLifetimeMs: 30 * 86_400_000 }, /`maxLifetimeMs`.*to 2147483647/],
  [{ maxLifetimeSeconds: 30 * 86_400 }, /`maxLifetimeSeconds`.*to 2147483 /],
  [{ connectionString: 'postgres://u:hunter2@host:99999999/db' }, /`connectionString`.*pg can use \(Invalid URL\).*a value of type string/],
  [{ idleTimeoutMillis: -5 }, /`idleTimeoutMillis`.*`-5` \(number\)/],
  [{ maxUses: 0 }, /`maxUses`.*`0` \(number\)/],
  [{ maxLifetimeSeconds: -1 }, /`maxLifetimeSeconds`/],
  [{ connectionTimeoutMillis: 'soon' }, /`connectionTimeoutMillis`.*`soon` \(string\)/],
  [{ host: 5432 }, /`host`.*a string.*`5432` \(number\)/],
  [{ Client: {} }, /`Client`.*a function.*an object/],
  [{ max: () => 3 }, /`max`.*a function/],
  [{ maxLifetimeMs: -1 }, /`maxLifetimeMs`.*or false.*`-1` \(number\)/],
  [{ maxLifetimeMs: '30m' }, /`maxLifetimeMs`.*`30m` \(string\)/],
  [{ maxLifetimeJitter: 1 }, /`maxLifetimeJitter`.*fraction.*`1` \(number\)/],
  [{ onConnect: 'yes' }, /`onConnect`.*a function/],
  [{ verify: 1 }, /`verify`.*a function/],
  [{ sessionReset: 'sometimes' }, /`sessionReset`.*'auto', 'always' or false.*`sometimes` \(string\)/],
  [{ underPressure: 'on' }, /`underPressure`.*or false.*`on` \(string\)/],
  [{ connectionString: null }, /`connectionString`.*a string.*a value of type null/],
  ['postgres://alice:s3cr3t@db/x', /`options`.*an object, got a value of type string/],
  [{ pgbouncer: 'yes' }, /`pgbouncer`.*true or false.*`yes` \(string\)/],
  [{ pgbouncer: true, statement_timeout: 100 }, /`statement_timeout`.*pgbouncer: true \(PgBouncer refuses it.*statementTimeoutMs/],
  [{ pgbouncer: true, lock_timeout: 100 }, /`lock_timeout`.*PgBouncer refuses it/],
  [{ pgbouncer: true, idle_in_transaction_session_timeout: 100 }, /`idle_in_transaction_session_timeout`.*PgBouncer refuses it/],
  [{ pgbouncer: true, options: '-c search_path=x password=hunter2' }, /`options`.*PgBouncer refuses it.*a value of type string/],
  [{ pgbouncer: true, sessionReset: 'auto' }, /`sessionReset`.*false with pgbouncer: true/]
]

for (const [options, message] of cases) {
  t.test(`rejects ${JSON.stringify(options)}`, async (t) => {
    const error = await registerError(options)
    t.ok(error instanceof PgInvalidOptionError, 'an instance of the exported error')
    t.equal(error.code, 'FST_PG_INVALID_OPTION')
    t.match(error.message, message)
    t.notMatch(error.message, /hunter2|s3cr3t/, 'no password in the message')
  })
}

t.test('a password is never echoed', async (t) => {
  const secret = 'hunter2-very-secret'
  const fromPassword = await registerError({ password: { value: secret } })
  t.equal(fromPassword.code, 'FST_PG_INVALID_OPTION')
  t.notMatch(fromPassword.message, secret)
  const fromUrl = await registerError({ connectionString: 123, password: secret, max: 0 })
  t.notMatch(fromUrl.message, secret)
})

t.test('valid options are not mutated and leave no trace in JSON', async (t) => {
  const options = Object.freeze({ connectionString: 'postgres://u:hunter2@127.0.0.1:1/db', max: 3, pingIdleMs: false as const })
  const app = Fastify()
  await app.register(pgPool, options)
  await app.ready()
  t.same(options, { connectionString: 'postgres://u:hunter2@127.0.0.1:1/db', max: 3, pingIdleMs: false })
  t.notMatch(JSON.stringify(app.pg), 'hunter2')
  t.notMatch(JSON.stringify(app.pg.stats()), 'hunter2')
  t.notMatch(JSON.stringify(app.pg.pool), 'hunter2')
  await app.close()
})
