// The load generator of bench/impatient.ts, in its own process: CLIENTS loops, each sending
// GET url and giving up (destroying the socket) after PATIENCE_MS, for DURATION_S seconds.
// Prints one JSON line: { sent, answered, gaveUp }.
import http from 'node:http'

const [url, clients, patienceMs, durationS] = process.argv.slice(2)
const until = Date.now() + Number(durationS) * 1000
let sent = 0
let answered = 0
let gaveUp = 0

function once () {
  return new Promise((resolve) => {
    sent++
    const req = http.get(url, { agent: false }, (res) => {
      res.resume()
      res.on('end', () => { answered++; clearTimeout(timer); resolve() })
      res.on('error', () => resolve())
    })
    const timer = setTimeout(() => { gaveUp++; req.destroy(); resolve() }, Number(patienceMs))
    req.on('error', () => { clearTimeout(timer); resolve() })
  })
}

async function loop () {
  while (Date.now() < until) await once()
}

await Promise.all(Array.from({ length: Number(clients) }, loop))
process.stdout.write(JSON.stringify({ sent, answered, gaveUp }) + '\n')
