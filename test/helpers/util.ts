import { spawnSync, type SpawnSyncReturns } from 'node:child_process'
import http from 'node:http'
import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'

export interface Deferred<T = void> {
  promise: Promise<T>
  resolve (value: T): void
  reject (error: unknown): void
}

/** A promise the test settles itself: the barrier that makes lifecycle tests deterministic. */
export function deferred<T = void> (): Deferred<T> {
  let resolve!: (value: T) => void
  let reject!: (error: unknown) => void
  const promise = new Promise<T>((_resolve, _reject) => {
    resolve = _resolve
    reject = _reject
  })
  return { promise, resolve, reject }
}

/**
 * Polls `condition` until it holds; fails after `timeoutMs`. For effects that complete
 * asynchronously after an event the test cannot await (a socket closed by the peer).
 */
export async function until (condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** Starts the app on a real socket and returns its base URL. */
export async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  return `http://127.0.0.1:${port}`
}

export interface Sent {
  /** The raw client request: destroy it to abort. */
  req: http.ClientRequest
  /** Settles with the response (status and body), or with the error when the request was aborted. */
  done: Promise<{ status: number, headers: http.IncomingHttpHeaders, body: string } | Error>
  /** Resolves when the response headers arrive. */
  headers: Promise<http.IncomingMessage>
}

/** A real HTTP request that the test can abort at any point. */
export function send (url: string, { method = 'GET', body, headers: extra = {} }: { method?: string, body?: unknown, headers?: Record<string, string> } = {}): Sent {
  const payload = body === undefined ? undefined : JSON.stringify(body)
  const req = http.request(url, {
    method,
    agent: false,
    headers: { ...extra, ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }) }
  })
  const headers = deferred<http.IncomingMessage>()
  const done = new Promise<Awaited<Sent['done']>>((resolve) => {
    req.on('error', resolve)
    req.on('response', (res) => {
      headers.resolve(res)
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.on('error', resolve)
      res.on('aborted', () => resolve(new Error('aborted')))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }))
    })
  })
  req.end(payload)
  return { req, done, headers: headers.promise }
}

/**
 * Runs a Node script in a child process that stays out of the coverage report (it runs built
 * files, or sources compiled another way). tap's process tracking re-adds its hooks to any
 * environment it is given, so `env -u` removes them in the child's own exec.
 */
export function runNode (args: string[], options: { timeout?: number } = {}): SpawnSyncReturns<string> {
  const unset = ['NODE_OPTIONS', 'NODE_V8_COVERAGE'].flatMap((name) => ['-u', name])
  return spawnSync('env', [...unset, process.execPath, ...args], { encoding: 'utf8', ...options })
}

/** A Fastify logger stream that keeps every line, parsed, for assertions. */
export function logLines (): { stream: Writable, lines: Array<Record<string, any>> } {
  const lines: Array<Record<string, any>> = []
  const stream = new Writable({
    write (chunk, _enc, done) {
      for (const line of String(chunk).split('\n')) if (line !== '') lines.push(JSON.parse(line))
      done()
    }
  })
  return { stream, lines }
}
