/**
 * Memory: 1 000 requests in flight at once, each inside its handler, either without touching the
 * database or holding `request.db` (pool max 10: 10 hold a connection, 990 wait for one). The
 * clients run in another process; the server's heap is read after a full GC (node --expose-gc).
 */
import { spawn } from 'node:child_process'
import Fastify from 'fastify'
import pg from 'pg'
import { listen, table, pgPool } from './lib.js'

const IN_FLIGHT = 1000

/** 1 000 concurrent GETs from a child process; resolves when all responses arrived. */
function clients (url: string): Promise<void> {
  const script = `
    const http = require('node:http')
    let left = ${IN_FLIGHT}
    for (let i = 0; i < ${IN_FLIGHT}; i++) {
      http.get(process.argv[1], { agent: false }, (res) => { res.resume(); res.on('end', () => { if (--left === 0) process.exit(0) }) })
        .on('error', (e) => { console.error(e.message); process.exit(1) })
    }`
  const child = spawn(process.execPath, ['-e', script, url], { stdio: 'inherit' })
  return new Promise((resolve, reject) => child.on('exit', (code) => code === 0 ? resolve() : reject(new Error(`clients exited ${code}`))))
}

async function until (condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 20))
}

function heap (): { heapUsed: number, rss: number } {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error('run with node --expose-gc (npm run bench does)')
  gc()
  gc()
  const { heapUsed, rss } = process.memoryUsage()
  return { heapUsed, rss }
}

export async function memory (connectionString: string): Promise<string> {
  const app = Fastify()
  await app.register(pgPool, { connectionString, max: 10, maxWaiting: Infinity, acquireTimeoutMs: 120_000, underPressure: false })
  let entered = 0
  let open!: () => void
  let gate = Promise.resolve()
  app.get('/none', async () => {
    entered++
    await gate
    return 'ok'
  })
  app.get('/db', async (req) => {
    const query = req.db.query('select 1')
    entered++
    await gate
    return (await query).rowCount
  })
  const url = await listen(app)

  const inFlight = async (path: string): Promise<{ heapUsed: number, rss: number }> => {
    entered = 0
    gate = new Promise<void>((resolve) => { open = resolve })
    const done = clients(url + path)
    await until(() => entered === IN_FLIGHT)
    await new Promise((resolve) => setTimeout(resolve, 200)) // the queue settles
    const measured = heap()
    open()
    await done
    return measured
  }

  await inFlight('/db') // warm up: JIT, pool connections
  await inFlight('/none')
  const idle = heap()
  const none = await inFlight('/none')
  const db = await inFlight('/db')
  await app.close()

  const kb = (bytes: number): string => (bytes / 1024).toFixed(0)
  const perRequest = (db.heapUsed - none.heapUsed) / IN_FLIGHT
  const cache = await statementCache(connectionString)
  return `### Memory: ${IN_FLIGHT} requests in flight (heap after a full GC)\n\n` +
    table(['state', 'heap used (KB)', 'RSS (KB)'], ['---', '---:', '---:'], [
      ['server idle', kb(idle.heapUsed), kb(idle.rss)],
      [`${IN_FLIGHT} in flight, no database`, kb(none.heapUsed), kb(none.rss)],
      [`${IN_FLIGHT} in flight holding request.db (10 connected, 990 waiting)`, kb(db.heapUsed), kb(db.rss)]
    ]) +
    `\n\nrequest.db costs ${perRequest.toFixed(0)} bytes of heap per in-flight request ` +
    `(${kb(db.heapUsed - none.heapUsed)} KB per ${IN_FLIGHT}).\n\n` + cache
}

const CONNECTIONS = 20
const CACHE = 100

/**
 * Idle connections with their statement cache full (`statementCacheSize` 100, the default): the
 * app's heap per connection, against the same pool whose connections prepared nothing; and the
 * server's memory per backend (pg_backend_memory_contexts, read on the connection itself).
 */
async function statementCache (connectionString: string): Promise<string> {
  const measure = async (fill: boolean): Promise<{ heapUsed: number, backend: number }> => {
    const app = Fastify()
    await app.register(pgPool, { connectionString, max: CONNECTIONS, min: CONNECTIONS, underPressure: false, pingIdleMs: false })
    await app.ready()
    const clients = await Promise.all(Array.from({ length: CONNECTIONS }, () => app.pg.connect()))
    for (const client of clients) {
      // Texts as an app's own: distinct, about 120 characters each.
      if (fill) for (let i = 0; i < CACHE; i++) await client.query(`select id, name, created_at from bench_statement_${i % 10} where id = $1 and tenant = $2 /* ${i} */`, [1, 2])
    }
    const { rows: [row] } = await clients[0]!.query<{ bytes: string }>('select sum(total_bytes) as bytes from pg_backend_memory_contexts')
    for (const client of clients) client.release()
    await until(() => app.pg.stats().idle === CONNECTIONS)
    const { heapUsed } = heap()
    await app.close()
    return { heapUsed, backend: Number(row?.bytes) }
  }
  const setup = new pg.Client({ connectionString })
  await setup.connect()
  for (let i = 0; i < 10; i++) await setup.query(`create table if not exists bench_statement_${i} (id int primary key, tenant int, name text, created_at timestamptz)`)
  await setup.end()
  await measure(true) // warm up
  const empty = await measure(false)
  const full = await measure(true)
  const kb = (bytes: number): string => (bytes / 1024).toFixed(1)
  return `#### Idle connections, statement cache full (${CONNECTIONS} connections × ${CACHE} prepared statements)\n\n` +
    table(['', 'none prepared', `${CACHE} prepared each`, 'per connection'], ['---', '---:', '---:', '---:'], [
      ['app heap (KB)', kb(empty.heapUsed), kb(full.heapUsed), kb((full.heapUsed - empty.heapUsed) / CONNECTIONS)],
      ['one backend on the server (KB)', kb(empty.backend), kb(full.backend), kb(full.backend - empty.backend)]
    ])
}
