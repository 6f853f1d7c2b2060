/**
 * Memory: 1 000 requests in flight at once, each inside its handler, either without touching the
 * database or holding `request.db` (pool max 10: 10 hold a connection, 990 wait for one). The
 * clients run in another process; the server's heap is read after a full GC (node --expose-gc).
 */
import { spawn } from 'node:child_process'
import Fastify from 'fastify'
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
  return `### Memory: ${IN_FLIGHT} requests in flight (heap after a full GC)\n\n` +
    table(['state', 'heap used (KB)', 'RSS (KB)'], ['---', '---:', '---:'], [
      ['server idle', kb(idle.heapUsed), kb(idle.rss)],
      [`${IN_FLIGHT} in flight, no database`, kb(none.heapUsed), kb(none.rss)],
      [`${IN_FLIGHT} in flight holding request.db (10 connected, 990 waiting)`, kb(db.heapUsed), kb(db.rss)]
    ]) +
    `\n\nrequest.db costs ${perRequest.toFixed(0)} bytes of heap per in-flight request ` +
    `(${kb(db.heapUsed - none.heapUsed)} KB per ${IN_FLIGHT}).`
}
