/** HTTP/2 responses end with 'close' too, and have no `destroyed`: the handle still knows. */
import http2 from 'node:http2'
import Fastify from 'fastify'
import t from 'tap'
import pgPool from '../src/index.js'
import { setupDatabase } from './helpers/postgres.js'
import { deferred } from './helpers/util.js'

const db = await setupDatabase(t)

async function get (base: string, path: string): Promise<{ status: number, body: string }> {
  const session = http2.connect(base)
  try {
    return await new Promise((resolve, reject) => {
      const req = session.request({ ':path': path })
      let body = ''
      let status = 0
      req.on('response', (headers) => { status = Number(headers[':status']) })
      req.setEncoding('utf8')
      req.on('data', (chunk: string) => { body += chunk })
      req.on('end', () => resolve({ status, body }))
      req.on('error', reject)
    })
  } finally {
    session.close()
  }
}

t.test('over HTTP/2: queries, release, and no use after the response closed', async (t) => {
  const app = Fastify({ http2: true })
  await app.register(pgPool, { connectionString: db.url, max: 1 })
  t.teardown(() => app.close())
  const late = deferred<unknown>()
  app.get('/', async (req) => (await req.db.query('select 1 as n')).rows[0])
  app.get('/late', {
    onResponse: async (req) => {
      await new Promise((resolve) => setTimeout(resolve, 20))
      await req.db.query('select 1').then(late.resolve, late.resolve)
    }
  }, async () => 'ok')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  t.same(await get(base, '/'), { status: 200, body: '{"n":1}' })
  t.has(app.pg.stats(), { total: 1, idle: 1, active: 0, waiting: 0 })
  t.equal((await get(base, '/late')).status, 200)
  t.match(await late.promise, { code: 'FST_PG_REQUEST_ENDED' })
  t.has(app.pg.stats(), { total: 1, idle: 1, active: 0, waiting: 0 }, 'nothing checked out for it')
})
