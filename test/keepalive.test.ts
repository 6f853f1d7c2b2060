/** TCP keepalive is on by default, with a 10 s initial delay; both can be overridden. */
import t from 'tap'
import pg from 'pg'
import type { PgPoolOptions } from '../src/index.js'
import { buildApp } from './helpers/app.js'
import { setupDatabase } from './helpers/postgres.js'

const db = await setupDatabase(t)

function recordingClient () {
  const configs: pg.ClientConfig[] = []
  class Recording extends pg.Client {
    constructor (config: pg.ClientConfig) {
      super(config)
      configs.push(config)
    }
  }
  // pg-pool's type for `Client` declares a constructor without arguments; pg passes the config.
  return { Client: Recording as unknown as PgPoolOptions['Client'], configs }
}

t.test('defaults: keepAlive on, first probe after 10 s', async (t) => {
  const { Client, configs } = recordingClient()
  const app = await buildApp(t, db, { Client })
  await app.pg.query('select 1')
  t.match(configs[0], { keepAlive: true, keepAliveInitialDelayMillis: 10_000 })
})

t.test('overridable', async (t) => {
  const { Client, configs } = recordingClient()
  const app = await buildApp(t, db, { Client, keepAlive: false, keepAliveInitialDelayMillis: 1000 })
  await app.pg.query('select 1')
  t.match(configs[0], { keepAlive: false, keepAliveInitialDelayMillis: 1000 })
})
