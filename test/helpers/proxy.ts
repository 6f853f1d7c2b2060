/**
 * A TCP proxy between the app and PostgreSQL that fails the way networks do:
 * - blackhole(): existing connections go silent in both directions while their sockets stay
 *   open (a NAT or load balancer that forgot the flow); new connections still pass.
 * - reset(): existing connections are closed with a TCP RST.
 * - forget(): existing connections are forgotten: the next bytes either side sends are answered
 *   with a RST (a NAT that lost the flow, a load balancer that failed over).
 * - hold() / resume(): existing connections stall (bytes wait in the kernel), then flow again:
 *   a slow network, under the test's control.
 */
import { createServer, connect, type Server, type Socket } from 'node:net'

interface Pair { client: Socket, upstream: Socket, silent: boolean, forgotten: boolean }

export class TcpProxy {
  readonly #server: Server
  readonly #pairs = new Set<Pair>()
  #target: number
  port = 0

  private constructor (targetPort: number) {
    this.#target = targetPort
    this.#server = createServer((client) => this.#accept(client))
  }

  static async start (targetPort: number): Promise<TcpProxy> {
    const proxy = new TcpProxy(targetPort)
    await new Promise<void>((resolve) => proxy.#server.listen(0, '127.0.0.1', resolve))
    proxy.port = (proxy.#server.address() as { port: number }).port
    return proxy
  }

  /** Connections currently open through the proxy. */
  get connections (): number {
    return this.#pairs.size
  }

  /** Sends new connections to another server port (a failover). */
  retarget (port: number): void {
    this.#target = port
  }

  blackhole (): void {
    for (const pair of this.#pairs) pair.silent = true
  }

  forget (): void {
    for (const pair of this.#pairs) pair.forgotten = true
  }

  hold (): void {
    for (const pair of this.#pairs) {
      pair.client.pause()
      pair.upstream.pause()
    }
  }

  resume (): void {
    for (const pair of this.#pairs) {
      pair.client.resume()
      pair.upstream.resume()
    }
  }

  reset (): void {
    for (const pair of this.#pairs) {
      pair.client.resetAndDestroy()
      pair.upstream.resetAndDestroy()
    }
  }

  async close (): Promise<void> {
    for (const pair of this.#pairs) {
      pair.client.destroy()
      pair.upstream.destroy()
    }
    await new Promise((resolve) => this.#server.close(resolve))
  }

  #accept (client: Socket): void {
    const upstream = connect(this.#target, '127.0.0.1')
    const pair: Pair = { client, upstream, silent: false, forgotten: false }
    this.#pairs.add(pair)
    const forward = (from: Socket, to: Socket): void => {
      from.on('data', (chunk) => {
        if (pair.forgotten) {
          from.resetAndDestroy()
          to.resetAndDestroy()
        } else if (!pair.silent) {
          to.write(chunk)
        }
      })
      from.on('end', () => { if (!pair.silent) to.end() })
      from.on('error', () => {})
      from.on('close', () => {
        this.#pairs.delete(pair)
        if (!pair.silent) to.destroy()
      })
    }
    forward(client, upstream)
    forward(upstream, client)
  }
}
