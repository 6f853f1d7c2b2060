import { createServer, type Server, type Socket } from 'node:net'
import { TcpProxy } from './proxy.js'
import type { Database } from './postgres.js'

interface Teardown { teardown (fn: () => unknown): void }

/** A proxy in front of the test database, and the connection string that goes through it. */
export async function proxied (t: Teardown, db: Database): Promise<{ proxy: TcpProxy, url: string }> {
  const url = new URL(db.url)
  const proxy = await TcpProxy.start(Number(url.port))
  t.teardown(() => proxy.close())
  url.port = String(proxy.port)
  return { proxy, url: url.toString() }
}

/** A TCP server that accepts connections and never says a word: a hung database. */
export async function silentServer (t: Teardown): Promise<number> {
  const sockets = new Set<Socket>()
  const server: Server = createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return (server.address() as { port: number }).port
}

/** A port with nothing listening on it: connections are refused. */
export async function closedPort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}
