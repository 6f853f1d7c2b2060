/**
 * Options are validated once, at register time: a wrong type or range fails with
 * FST_PG_INVALID_OPTION naming the option and the value received, and never echoes a password.
 */
import { readFile } from 'node:fs/promises'
import Fastify from 'fastify'
import pg from 'pg'
import t from 'tap'
import pgPool, { PgInvalidOptionError, type PgPoolOptions } from '../src/index.js'
import { OPTIONS, REFUSED, resolveOptions } from '../src/options.js'

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
  [{ pgbouncer: true, sessionReset: 'auto' }, /`sessionReset`.*false with pgbouncer: true/],
  // In the connection string, where pg reads them too (found by an adversarial pass).
  [{ pgbouncer: true, connectionString: 'postgres://u:hunter2@h/db?options=-c%20search_path%3Dapp' }, /`connectionString`.*without `options` with pgbouncer: true.*a value of type string/],
  [{ pgbouncer: true, connectionString: 'postgres://u:hunter2@h/db?statement_timeout=5000&idle_in_transaction_session_timeout=1000' }, /without `statement_timeout`, `idle_in_transaction_session_timeout` with pgbouncer: true \(PgBouncer refuses them/]
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

// Values that pg takes and then crashes on (or fails every request with) at the first query.
const pgCases: Array<[Record<string, unknown>, RegExp]> = [
  [{ types: {} }, /`types`.*getTypeParser.*an object/],
  [{ types: '5' }, /`types`.*`5` \(string\)/],
  [{ types: { getTypeParser: () => 5 } }, /`types`.*returning parsers/],
  [{ options: 5 }, /`options`.*a string.*a value of type number/],
  [{ statement_timeout: Symbol('s') }, /`statement_timeout`.*or false.*`Symbol\(s\)` \(symbol\)/],
  [{ keepAliveInitialDelayMillis: Symbol('s') }, /`keepAliveInitialDelayMillis`.*`Symbol\(s\)` \(symbol\)/],
  [{ query_timeout: 1e12 }, /`query_timeout`.*to 2147483647, or false.*`1000000000000` \(number\)/],
  [{ lock_timeout: -1 }, /`lock_timeout`/],
  [{ idle_in_transaction_session_timeout: '5s' }, /`idle_in_transaction_session_timeout`.*`5s` \(string\)/],
  [{ pingIdleMs: 1.5 }, /`pingIdleMs`.*whole number/],
  [{ port: -1 }, /`port`.*from 1 to 65535.*`-1` \(number\)/],
  [{ port: 70000 }, /`port`.*`70000` \(number\)/],
  [{ port: 'abc' }, /`port`.*`abc` \(string\)/],
  [{ port: 10n }, /`port`.*`10` \(bigint\)/],
  [{ ssl: 'yes' }, /`ssl`.*true, false, or tls\.connect options.*`yes` \(string\)/],
  [{ ssl: [] }, /`ssl`.*an array/],
  [{ sslnegotiation: 'Postgres' }, /`sslnegotiation`.*'postgres' or 'direct'/],
  [{ sslnegotiation: 'direct' }, /`sslnegotiation`.*unless `ssl` is on/],
  [{ stream: {} }, /`stream`.*a function returning a new stream/],
  [{ client_encoding: 'latin1' }, /`client_encoding`.*'UTF8'/],
  [{ binary: 'yes' }, /`binary`.*true or false/],
  [{ scramMaxIterations: 0 }, /`scramMaxIterations`.*at least 1/],
  [{ fallback_application_name: 1e21 }, /`fallback_application_name`.*a string/],
  [{ application_name: null }, /`application_name`.*`null` \(null\)/],
  [{ connectionString: '' }, /`connectionString`.*not empty/],
  [{ host: '' }, /`host`.*not empty/],
  [{ allowExitOnIdle: 'yes' }, /`allowExitOnIdle`.*true or false/],
  [{ underPressure: [] }, /`underPressure`.*an array/],
  [{ Client: class {} }, /`Client`.*connect, query, end and on/],
  [{ Client: () => {} }, /`Client`.*a class like pg\.Client/],
  [{ pooling: false, min: 1 }, /`min`.*0 when pooling is false/],
  [{ statementTimeoutMs: 100, statement_timeout: 100 }, /`statement_timeout`.*unset when statementTimeoutMs is given/],
  [{ name: '' }, /`name`.*a name of letters/],
  [{ name: 'read replica' }, /`name`.*a name of letters/],
  [{ name: '1st' }, /`name`.*starting with a letter/],
  [{ name: 'default' }, /`name`.*none of `default`/],
  [{ name: 'query' }, /`name`.*`query`/],
  [{ name: 'hasOwnProperty' }, /`name`/],
  [{ name: 42 }, /`name`.*got `42` \(number\)/]
]

// Keys pg or pg-pool accept that the plugin does not support: refused with the reason.
const refusedCases: Array<[Record<string, unknown>, RegExp]> = [
  [{ log: () => {} }, /`log`.*unset \(not used: the plugin logs through Fastify's logger/],
  [{ Promise }, /`Promise`.*unset \(not supported: pg deprecates custom Promise/],
  [{ native: true }, /`native`.*pg-native's client class as `Client`/],
  [{ pg: {} }, /`pg`.*not supported/],
  [{ connection: {} }, /`connection`.*not supported/],
  [{ replication: 'database' }, /`replication`.*not supported/],
  [{ poolSize: 5 }, /`poolSize`.*use `max`/],
  [{ sslmode: 'require' }, /`sslmode`.*`connectionString` \(\?sslmode=\.\.\.\).*`ssl`/],
  [{ connect_timeout: 5 }, /`connect_timeout`.*`connectionTimeoutMillis`/],
  [{ transaction: true }, /`transaction`.*a route option/],
  [{ maxEventLoopDelay: 1000 }, /`maxEventLoopDelay`.*`underPressure: \{ maxEventLoopDelay \}`/]
]

// Misspelt and unknown keys: refused, with the closest known key; the value is never shown.
const unknownCases: Array<[Record<string, unknown>, RegExp]> = [
  [{ pingIdelMs: 1000 }, /`pingIdelMs` to be a known option \(did you mean `pingIdleMs`\?\), got an unknown key/],
  [{ maxWaitng: 5 }, /did you mean `maxWaiting`/],
  [{ idleTimeoutMs: 1000 }, /did you mean `idleTimeoutMillis`/],
  [{ applicationName: 'x' }, /did you mean `application_name`/],
  [{ MAX: 3 }, /did you mean `max`/],
  [{ pasword: 'hunter2' }, /`pasword`.*did you mean `password`/],
  [{ fuzzKey: 1 }, /`fuzzKey` to be a known option, got an unknown key/]
]

for (const [options, message] of [...pgCases, ...refusedCases, ...unknownCases]) {
  t.test(`rejects ${Object.keys(options).join(', ')}: ${String(Object.values(options)[0]).slice(0, 20)}`, async (t) => {
    const error = await registerError(options)
    t.equal(error.code, 'FST_PG_INVALID_OPTION')
    t.match(error.message, message)
    t.notMatch(error.message, /hunter2/, 'no password in the message')
  })
}

t.test('accepted: what pg accepts and works, Fastify\'s own register options, undefined as absent', async (t) => {
  for (const options of [
    { port: '5432' },
    { port: 65535, ssl: false, sslnegotiation: 'postgres' },
    { ssl: Object.create(null), sslnegotiation: 'direct' },
    { idleTimeoutMillis: null },
    { client_encoding: 'utf-8', types: pg.types, stream: () => null, pipeline: false, binary: false },
    { query_timeout: false, statement_timeout: 0, lock_timeout: 2 ** 31 - 1, keepAliveInitialDelayMillis: 0 },
    { Client: pg.Client, prefix: '/db', logLevel: 'warn' },
    { pingIdelMs: undefined, max: undefined, log: undefined },
    { maxLifetimeSeconds: 1.5 },
    { pooling: false, min: 0, maxWaiting: 3, sessionReset: 'always', statementTimeoutMs: 100 },
    { pgbouncer: true, pooling: true, onConnect: () => {}, verify: () => {} }
  ]) {
    const app = Fastify()
    await t.resolves(async () => { await app.register(pgPool, { connectionString: 'postgres://u:p@127.0.0.1:1/db', ...options } as PgPoolOptions) }, JSON.stringify(options))
    await app.close()
  }
})

t.test('no options at all: the defaults', async (t) => {
  const resolved = resolveOptions(undefined, pg.Client)
  t.match(resolved, { max: 10, min: 0, maxWaiting: 20, pingIdleMs: 1000, sessionReset: 'auto', client: { keepAlive: true, fallback_application_name: 'fastify-pg-pool' } })
  t.same(resolveOptions({ pgbouncer: true }, pg.Client).sessionReset, false, 'no session reset behind PgBouncer')
})

t.test('a route config: a misspelt key or a wrong value fails when the route is added, naming the route', async (t) => {
  const app = Fastify()
  await app.register(pgPool, { connectionString: 'postgres://u:p@127.0.0.1:1/db' })
  t.teardown(() => app.close())
  const add = (url: string, pgPool: unknown) => () => app.post(url, { config: { pgPool: pgPool as never } }, async () => 'x')
  t.throws(add('/a', { transacton: true }), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool\.transacton` to be a known option \(did you mean `transaction`\?\) \(route POST \/a\)/ })
  t.throws(add('/b', { statementTimeoutMs: 'soon' }), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool\.statementTimeoutMs`.*\(route POST \/b\), got "soon"/ })
  t.throws(add('/c', { statementTimeoutMs: 10n }), { code: 'FST_PG_INVALID_OPTION', message: /\(route POST \/c\), got 10n/ })
  t.throws(add('/d', { transaction: { isolation: 'serializable' } }), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool\.transaction\.isolation`.*did you mean `isolationLevel`.*POST \/d/ })
  t.throws(add('/e', { transaction: { isolationLevel: 'chaos' } }), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool\.transaction\.isolationLevel`.*one of serializable.*POST \/e.*"chaos"/ })
  t.throws(add('/f', { transaction: { deferrable: 1 } }), { code: 'FST_PG_INVALID_OPTION', message: /transaction\.deferrable.*POST \/f/ })
  t.throws(add('/g', { transaction: [] }), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool\.transaction`.*POST \/g/ })
  t.throws(add('/h', Object.create(null, { x: { value: 1, enumerable: true } })), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool\.x`/ })
  t.throws(add('/i', { shedding: Object.create(null) }), { code: 'FST_PG_INVALID_OPTION', message: /got \{\}/ })
  t.throws(add('/i2', 'on'), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool` to be an object \(route POST \/i2\), got "on"/ })
  t.throws(add('/j', { shedding: Symbol('s') }), { code: 'FST_PG_INVALID_OPTION', message: /got Symbol\(s\)/ })
  const circular: Record<string, unknown> = {}
  circular.self = circular
  t.throws(add('/k', { transaction: circular }), { code: 'FST_PG_INVALID_OPTION', message: /`config\.pgPool\.transaction\.self`.*an unknown key/ })
  t.throws(add('/l', { shedding: circular }), { code: 'FST_PG_INVALID_OPTION', message: /got an object/ })
  t.throws(add('/m', { transaction: { readOnly: 'yes' } }), { code: 'FST_PG_INVALID_OPTION', message: /transaction\.readOnly.*POST \/m/ })
  t.doesNotThrow(add('/ok', { transaction: { readOnly: true }, shedding: undefined, statementTimeoutMs: false }))
  t.doesNotThrow(add('/ok2', { transaction: true, statementTimeoutMs: 100 }))
  t.doesNotThrow(() => app.post('/ok3', { config: { pgPool: { transaction: true } }, onSend: async (_req, _reply, payload) => payload }, async () => 'x'))
  t.doesNotThrow(() => app.post('/plain', async () => 'x'))
})

t.test('the README lists every accepted and every refused key', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const section = readme.slice(readme.indexOf('\n## Options'), readme.indexOf('\n## ', readme.indexOf('\n## Options') + 1))
  for (const key of [...Object.keys(OPTIONS), ...Object.keys(REFUSED)]) t.match(section, `\`${key}\``, key)
})
