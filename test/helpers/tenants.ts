/**
 * Row-level security as apps set it up: a `notes` table of many tenants with RLS on, a policy
 * that reads `app.tenant_id`, a login role for the app that owns nothing (so the policy binds
 * it), and a role the requests run as. Role names carry the database's name: roles are
 * cluster-wide.
 */
import type { FastifyRequest } from 'fastify'
import type { PgIdentity } from '../../src/index.js'
import type { Database } from './postgres.js'

export interface Tenants {
  /** Connection string of the app's login role (not the table's owner). */
  url: string
  /** The role requests run as. */
  role: string
  /** The app's login role. */
  login: string
  /** Rows of `tenant`, read as the owner (around RLS). */
  rowsOf (tenant: number): Promise<Array<{ id: number, tenant_id: number, body: string }>>
  /** Every row, as the owner. */
  all (): Promise<Array<{ id: number, tenant_id: number, body: string }>>
  /** An identity function reading the `x-tenant` header (none without it). */
  fromHeader (request: FastifyRequest): PgIdentity | undefined
}

export async function tenants (db: Database, { tenants = 5, rowsEach = 3 } = {}): Promise<Tenants> {
  const suffix = new URL(db.url).pathname.slice(1)
  const role = `tenant_${suffix}`
  const login = `app_${suffix}`
  await db.admin(`
    create role ${role} nologin;
    create role ${login} login password 'app-secret';
    grant ${role} to ${login};
    create table notes (id serial primary key, tenant_id int not null, body text not null);
    alter table notes enable row level security;
    create policy by_tenant on notes
      using (tenant_id = nullif(current_setting('app.tenant_id', true), '')::int)
      with check (tenant_id = nullif(current_setting('app.tenant_id', true), '')::int);
    grant select, insert, update, delete on notes to ${role}, ${login};
    grant usage on sequence notes_id_seq to ${role}, ${login};
    insert into notes (tenant_id, body)
      select t, 'note ' || n || ' of ' || t from generate_series(1, ${tenants}) t, generate_series(1, ${rowsEach}) n;
  `)
  const url = new URL(db.url)
  url.username = login
  url.password = 'app-secret'
  return {
    url: url.toString(),
    role,
    login,
    rowsOf: async (tenant) => (await db.admin('select * from notes where tenant_id = $1 order by id', [tenant])).rows,
    all: async () => (await db.admin('select * from notes order by id')).rows,
    fromHeader: (request) => {
      const tenant = request.headers['x-tenant']
      return typeof tenant === 'string' ? { role, settings: { 'app.tenant_id': tenant } } : undefined
    }
  }
}
