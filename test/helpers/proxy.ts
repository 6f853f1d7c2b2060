/**
 * A TCP proxy between the app and PostgreSQL that fails the way networks do:
 * - blackhole(): existing connections go silent in both directions while their sockets stay
 *   open (a NAT or load balancer that forgot the flow); new connections still pass.
 * - reset(): existing connections are closed with a TCP RST.
 * - forget(): existing connections are forgotten: the next bytes either side sends are answered
 *   with a RST (a NAT that lost the flow, a load balancer that failed over).
 * - hold() / resume(): existing connections stall (bytes wait in the kernel), then flow again:
 *   a slow network, under the test's control.
 * - stopListening(): new connections are refused; open ones carry on.
 * - cutAfter(): the connection is cut once a given statement has reached the server: the server
 *   runs it (a COMMIT commits) and the client never hears the reply.
 */
import { createServer, connect, type Server, type Socket } from 'node:net'

/** Which statements a cut applies to: a pattern searched in the statement's text, or a test. */
export type StatementMatch = RegExp | ((text: string) => boolean)

export interface CutOptions {
  /** The first connection that sends a matching statement is cut, and the rule is spent. @default false */
  once?: boolean
  /**
   * When the client side is cut (a RST):
   * - `'sent'`: as soon as the statement has been forwarded. The server side is closed gently
   *   (FIN) after it: the server runs what it was sent, answers into the void, and ends the session.
   * - `'reply'`: the statement's reply is withheld; the client is cut when the server's
   *   ReadyForQuery for it has arrived, so the statement has certainly finished on the server.
   * @default 'sent'
   */
  at?: 'sent' | 'reply'
}

interface Rule { match: StatementMatch, once: boolean, at: 'sent' | 'reply' }

/** Startup-phase request codes after which the protocol is not plain messages: SSLRequest, GSSENCRequest. */
const ENCRYPTION_REQUESTS = new Set([80877103, 80877104])

/**
 * One direction of a PostgreSQL connection, split into messages across chunk boundaries: a
 * startup packet first when `startup` (int32 length including itself, no type byte), then
 * messages of one type byte and an int32 length including itself. Bodies are kept only for the
 * types in `keep`. `type` is '' for the startup packet.
 */
class Messages {
  #startup: boolean
  readonly #keep: string
  #head = Buffer.alloc(0)
  #type = ''
  #remaining = -1 // body bytes still to come; -1 while the header is incomplete
  #body: Buffer[] | undefined

  constructor (startup: boolean, keep: string) {
    this.#startup = startup
    this.#keep = keep
  }

  /**
   * Calls `each` for every message that completes in `chunk`, with its body (when kept) and the
   * offset in `chunk` just past it; stops when `each` returns true.
   */
  feed (chunk: Buffer, each: (type: string, body: Buffer | undefined, end: number) => boolean): void {
    let i = 0
    while (i < chunk.length) {
      if (this.#remaining < 0) {
        const size = this.#startup ? 4 : 5
        const take = Math.min(size - this.#head.length, chunk.length - i)
        this.#head = Buffer.concat([this.#head, chunk.subarray(i, i + take)])
        i += take
        if (this.#head.length < size) return
        this.#type = this.#startup ? '' : String.fromCharCode(this.#head[0]!)
        this.#remaining = this.#head.readInt32BE(size - 4) - 4
        this.#body = this.#startup || this.#keep.includes(this.#type) ? [] : undefined
        this.#head = Buffer.alloc(0)
      }
      const take = Math.min(this.#remaining, chunk.length - i)
      this.#body?.push(chunk.subarray(i, i + take))
      i += take
      this.#remaining -= take
      if (this.#remaining > 0) return
      this.#remaining = -1
      const body = this.#body && Buffer.concat(this.#body)
      // After an SSL or GSS request the startup packet is still to come.
      if (this.#startup && !ENCRYPTION_REQUESTS.has(body!.readInt32BE(0))) this.#startup = false
      if (each(this.#type, body, i)) return
    }
  }
}

/** A NUL-terminated string in `body` at `from`, and the offset past its NUL. */
function cstring (body: Buffer, from: number): [string, number] {
  const nul = body.indexOf(0, from)
  return [body.toString('utf8', from, nul), nul + 1]
}

interface Filtered { data: Buffer, cut: boolean }

interface Pair {
  client: Socket
  upstream: Socket
  silent: boolean
  forgotten: boolean
  /** Cut by a rule: nothing more is forwarded either way. */
  cut: boolean
  /** What the server sent while its replies are withheld (`withholdReplies`), and whether it ended. */
  withheld: { chunks: Buffer[], ended: boolean } | undefined
  /** Not parsed: the client asked for encryption. */
  opaque: boolean
  fromClient: Messages
  fromServer: Messages
  /** Messages sent that the server answers with a ReadyForQuery (startup, Query, Sync, FunctionCall). */
  sent: number
  /** ReadyForQuery messages received. */
  ready: number
  /** A rule matched a Parse: it fires at the next Sync. */
  parsed: Rule | undefined
  /** `at: 'reply'`: the ReadyForQuery after which the client is cut. */
  cutAtReady: number | undefined
}

export class TcpProxy {
  readonly #server: Server
  readonly #pairs = new Set<Pair>()
  readonly #rules = new Set<Rule>()
  #target: number
  #cuts = 0
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

  /** Connections cut so far by `cutAfter` rules. */
  get cuts (): number {
    return this.#cuts
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

  /**
   * On current and future connections: once a statement whose text matches has reached the
   * server, the client side is cut with a RST (see `CutOptions.at`). A simple Query is matched
   * on its text and cut after it; an extended-protocol Parse on its text, and cut after the Sync
   * that follows it (the statement runs at Execute). Plaintext connections only: one that asks
   * for SSL or GSS encryption is never cut. Returns a function that removes the rule.
   */
  cutAfter (match: StatementMatch, { once = false, at = 'sent' }: CutOptions = {}): () => void {
    const rule: Rule = { match, once, at }
    this.#rules.add(rule)
    return () => this.#rules.delete(rule)
  }

  /**
   * On current connections: what the server sends from now on (its end too) is kept from the
   * client until `releaseReplies()`, while the client's messages still reach the server. A FATAL
   * the server sent is then read after a statement the client sent meanwhile.
   */
  withholdReplies (): void {
    for (const pair of this.#pairs) pair.withheld ??= { chunks: [], ended: false }
  }

  releaseReplies (): void {
    for (const pair of [...this.#pairs]) {
      const withheld = pair.withheld
      if (withheld === undefined) continue
      pair.withheld = undefined
      for (const chunk of withheld.chunks) pair.client.write(chunk)
      if (withheld.ended) {
        this.#pairs.delete(pair)
        pair.client.end()
      }
    }
  }

  /** Stops listening: new connections are refused (the address is gone), open ones carry on. */
  stopListening (): void {
    this.#server.close()
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
    const pair: Pair = {
      client,
      upstream,
      silent: false,
      forgotten: false,
      cut: false,
      withheld: undefined,
      opaque: false,
      fromClient: new Messages(true, 'QP'),
      fromServer: new Messages(false, ''),
      sent: 0,
      ready: 0,
      parsed: undefined,
      cutAtReady: undefined
    }
    this.#pairs.add(pair)
    const forward = (from: Socket, to: Socket, filter: (chunk: Buffer) => Filtered, flowing = (): boolean => true): void => {
      from.on('data', (chunk: Buffer) => {
        if (pair.forgotten) {
          from.resetAndDestroy()
          to.resetAndDestroy()
        } else if (!pair.silent && !pair.cut && flowing()) {
          const { data, cut } = filter(chunk)
          to.write(data)
          if (cut) this.#cut(pair)
        }
      })
      from.on('end', () => { if (!pair.silent && !pair.cut && flowing()) to.end() })
      from.on('error', () => {})
      from.on('close', () => {
        if (!flowing()) return
        this.#pairs.delete(pair)
        if (!pair.silent && !pair.cut) to.destroy()
      })
    }
    forward(client, upstream, (chunk) => this.#fromClient(pair, chunk))
    // The server's side, unless its replies are withheld: then kept, its end too, for later.
    upstream.on('data', (chunk: Buffer) => {
      if (pair.withheld !== undefined) pair.withheld.chunks.push(chunk)
    })
    upstream.on('end', () => { if (pair.withheld !== undefined) pair.withheld.ended = true })
    upstream.on('close', () => { if (pair.withheld !== undefined) pair.withheld.ended = true })
    forward(upstream, client, (chunk) => this.#fromServer(pair, chunk), () => pair.withheld === undefined)
  }

  /** What to forward of a client chunk, and whether a rule cuts the connection after it. */
  #fromClient (pair: Pair, chunk: Buffer): Filtered {
    if (pair.opaque) return { data: chunk, cut: false }
    let fired: { rule: Rule, end: number } | undefined
    pair.fromClient.feed(chunk, (type, body, end) => {
      if (type === '' && ENCRYPTION_REQUESTS.has(body!.readInt32BE(0))) {
        pair.opaque = true
        return true
      }
      if (type === '' || type === 'Q' || type === 'S' || type === 'F') pair.sent++
      let rule: Rule | undefined
      if (type === 'Q') {
        rule = this.#match(cstring(body!, 0)[0])
      } else if (type === 'P') {
        pair.parsed ??= this.#match(cstring(body!, cstring(body!, 0)[1])[0])
      } else if (type === 'S') {
        rule = pair.parsed
        pair.parsed = undefined
      }
      if (rule !== undefined) fired = { rule, end }
      return fired !== undefined
    })
    if (fired === undefined) return { data: chunk, cut: false }
    this.#cuts++
    if (fired.rule.at === 'sent') return { data: chunk.subarray(0, fired.end), cut: true }
    pair.cutAtReady = pair.sent
    return { data: chunk, cut: false }
  }

  /**
   * What to forward of a server chunk: with an `at: 'reply'` cut pending, nothing of the
   * statement's reply, which starts after the ReadyForQuery before it; the connection is cut at
   * the ReadyForQuery that ends it.
   */
  #fromServer (pair: Pair, chunk: Buffer): Filtered {
    if (pair.opaque) return { data: chunk, cut: false }
    const withheld = pair.cutAtReady !== undefined && pair.ready >= pair.cutAtReady - 1
    let forward = withheld ? 0 : chunk.length
    let cut = false
    pair.fromServer.feed(chunk, (type, _body, end) => {
      if (type !== 'Z') return false
      pair.ready++
      if (pair.cutAtReady === undefined) return false
      if (pair.ready === pair.cutAtReady - 1) forward = end
      cut = pair.ready === pair.cutAtReady
      return cut
    })
    return { data: chunk.subarray(0, forward), cut }
  }

  /** The first rule that matches `text`; a `once` rule is spent by it. */
  #match (text: string): Rule | undefined {
    for (const rule of this.#rules) {
      const hit = rule.match instanceof RegExp ? text.search(rule.match) >= 0 : rule.match(text)
      if (!hit) continue
      if (rule.once) this.#rules.delete(rule)
      return rule
    }
    return undefined
  }

  /** The client gets a RST; the server gets a FIN after what it was sent. */
  #cut (pair: Pair): void {
    pair.cut = true
    pair.client.resetAndDestroy()
    pair.upstream.end()
  }
}
