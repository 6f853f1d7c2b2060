/**
 * How the plugin reads a statement's text before sending it (no server needed): what must stand
 * alone (transaction control; what PostgreSQL refuses inside a transaction block), how a
 * statement takes a request's identity, and how many statements a text holds, read as the server
 * reads it whether `standard_conforming_strings` is on or off.
 */
import t from 'tap'
import Cursor from 'pg-cursor'
import { standsAlone, takesIdentity } from '../src/send.js'
import { several } from '../src/sql.js'

t.test('standsAlone: control, blockless, or neither', async (t) => {
  const cases: Array<[string, 'control' | 'blockless' | undefined]> = [
    ['begin', 'control'],
    ['/* first */ COMMIT', 'control'],
    ['set transaction isolation level serializable', 'control'],
    ['vacuum', 'blockless'],
    ['vacuum (verbose, analyze) notes', 'blockless'],
    ['vacuum (verbose', 'blockless'],
    ['discard all', 'blockless'],
    ['discard temp', undefined],
    ['discard plans', undefined],
    ['cluster', 'blockless'],
    ['cluster verbose', 'blockless'],
    ['cluster (verbose)', 'blockless'],
    ['cluster notes using notes_pkey', undefined],
    ['cluster verbose notes', undefined],
    ['reindex (verbose) system', 'blockless'],
    ['reindex database app', 'blockless'],
    ['reindex schema public', 'blockless'],
    ['reindex table notes', undefined],
    ['reindex (concurrently) table notes', 'blockless'],
    ['reindex table concurrently notes', 'blockless'],
    ['create index concurrently on notes (body)', 'blockless'],
    ['create unique index concurrently i on notes (body)', 'blockless'],
    ['create index on notes (body)', undefined],
    ['drop index concurrently i', 'blockless'],
    ['create database x', 'blockless'],
    ['drop tablespace x', 'blockless'],
    ['create subscription s connection \'\' publication p', 'blockless'],
    ['alter system set work_mem = \'8MB\'', 'blockless'],
    ['alter subscription s disable', 'blockless'],
    ['alter table parted detach partition parted_1 concurrently', 'blockless'],
    ['alter table parted detach partition parted_1', undefined],
    ['alter database app set tablespace fast', 'blockless'],
    ['alter database app set work_mem = \'8MB\'', undefined],
    ['alter table notes add column x int', undefined],
    ['select 1', undefined],
    ['select * from created_at_log', undefined]
  ]
  for (const [text, expected] of cases) t.equal(standsAlone(text), expected, text)
})

t.test('takesIdentity', async (t) => {
  t.equal(takesIdentity('select 1'), 'front')
  t.equal(takesIdentity({ text: 'select $1', values: [1] }), 'front')
  t.equal(takesIdentity('rollback'), 'none')
  t.equal(takesIdentity('vacuum'), 'blockless')
  t.equal(takesIdentity('select 1; select 2'), 'several')
  t.equal(takesIdentity({ text: 'select 1', queryMode: 'simple' }), 'alone')
  t.equal(takesIdentity(new Cursor('select 1')), 'alone')
  t.equal(takesIdentity(new Cursor('select 1; commit')), 'several', "a cursor's text is read too")
})

t.test('several: what the server runs as more than one statement', async (t) => {
  const cases: Array<[string, boolean]> = [
    ['select 1', false],
    ['select 1;', false],
    ['select 1;;  ', false],
    ["select ';' as semicolon", false],
    ['select 1 -- ; select 2', false],
    ['select $$;$$', false],
    ['select 1; select 2', true],
    // A backslash: read both ways (standard_conforming_strings on, then off); either counts.
    ["select 'x\\'' ; commit ; select ''", true],
    ["select 'C:\\temp\\' as path", false],
    ["select E'it\\'s'; select 2", true]
  ]
  for (const [text, expected] of cases) t.equal(several(text), expected, text)
})
