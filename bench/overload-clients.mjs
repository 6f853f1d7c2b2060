// The load generator of bench/overload.ts, in its own process: CLIENTS loops, each on its own
// keep-alive connection (one socket, as a service or a browser tab), sending GET url for
// DURATION_S seconds, and after a 503:
//   flood   sends again at once (autocannon's loop: the worst case)
//   retry   waits 5 ms and sends again (a client that retries at once)
//   polite  waits what Retry-After says (1 s when absent), then sends again
// A new connection is opened whenever the server closed the last one. Latency is measured here,
// from the write of the request to the end of its response (with the connect, when it needed
// one). Prints one JSON line: counts per status, errors, connections opened, and per status the
// sorted latencies' p50, p90, p99 and max. Only the responses that ended within the run count
// (a contender that queues everything would otherwise be credited with its backlog).
import http from 'node:http'
import { performance } from 'node:perf_hooks'

const [url, clients, durationS, behaviour] = process.argv.slice(2)
const until = performance.now() + Number(durationS) * 1000
const latencies = new Map()
let errors = 0
let connections = 0

function record (status, ms) {
  let list = latencies.get(status)
  if (list === undefined) latencies.set(status, list = [])
  list.push(ms)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function once (agent) {
  return new Promise((resolve) => {
    const started = performance.now()
    const req = http.get(url, { agent }, (res) => {
      res.resume()
      res.on('end', () => {
        const ended = performance.now()
        if (ended <= until) record(res.statusCode, ended - started)
        resolve({ status: res.statusCode, retryAfter: Number(res.headers['retry-after'] ?? 1) })
      })
      res.on('error', () => { errors++; resolve({ status: 0 }) })
    })
    req.on('socket', (socket) => { if (socket.connecting) connections++ })
    req.on('error', () => { errors++; resolve({ status: 0 }) })
  })
}

async function loop () {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  while (performance.now() < until) {
    const { status, retryAfter } = await once(agent)
    if (status === 503 && behaviour !== 'flood') await sleep(behaviour === 'polite' ? Math.min(retryAfter * 1000, until - performance.now()) : 5)
    else if (status === 0) await sleep(5)
  }
  agent.destroy()
}

await Promise.all(Array.from({ length: Number(clients) }, loop))

const summary = {}
for (const [status, list] of latencies) {
  list.sort((a, b) => a - b)
  const at = (q) => list[Math.min(list.length - 1, Math.floor(q * list.length))]
  summary[status] = { count: list.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: list[list.length - 1] }
}
process.stdout.write(JSON.stringify({ statuses: summary, errors, connections }) + '\n')
