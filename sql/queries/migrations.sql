-- Named queries of the migrator, loaded by aiosql: the advisory lock that makes concurrent
-- starts migrate once, the schema, the bookkeeping tables recording what was applied, and the
-- version contract (omniq_meta keys schema_version and min_code_version, see sql/README.md).

-- name: installed(schema_name)$
-- Whether OmniQ's bookkeeping table exists in the schema (no lock, no error when absent).
SELECT to_regclass(format('%I.omniq_migrations', :schema_name::text)) IS NOT NULL;

-- name: applied_migrations()
-- Every applied migration and function file with the checksum it was applied with.
SELECT name, checksum, applied_at FROM "public".omniq_migrations ORDER BY name;

-- name: lock_installation(schema_name)$
-- Serialise migrators of one schema until the transaction ends (the script `omniq sql` prints).
SELECT pg_advisory_xact_lock(hashtextextended('omniq migrate ' || :schema_name::text, 0));

-- name: try_lock_installation(schema_name)$
-- The same lock for this session, without waiting: true when taken. OmniQ's migrator polls it
-- outside any transaction, so that a migrator waiting for it holds no snapshot that another
-- migrator's CREATE INDEX CONCURRENTLY would have to wait for (a deadlock otherwise).
SELECT pg_try_advisory_lock(hashtextextended('omniq migrate ' || :schema_name::text, 0));

-- name: unlock_installation(schema_name)$
-- Release the session's lock taken by try_lock_installation.
SELECT pg_advisory_unlock(hashtextextended('omniq migrate ' || :schema_name::text, 0));

-- name: bound_lock_waits(timeout)$
-- Make every lock wait of the rest of the migration transaction give up after :timeout (the
-- advisory lock above is already held: waiting for another migrator is not bounded).
SELECT set_config('lock_timeout', :timeout::text, true);

-- name: schema_exists(schema_name)$
-- Whether the configured schema exists. Checked before create_schema because CREATE SCHEMA
-- IF NOT EXISTS demands CREATE on the database even when the schema is already there.
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema_name::text);

-- name: create_schema()!
-- Create the configured schema when missing.
CREATE SCHEMA IF NOT EXISTS "public";

-- name: use_schema()!
-- Make the configured schema the only one searched for the rest of the transaction.
SET LOCAL search_path TO "public";

-- name: use_schema_for_session()!
-- The same for this session, around a CREATE INDEX CONCURRENTLY (it runs outside any
-- transaction); reset_search_path undoes it.
SET search_path TO "public";

-- name: reset_search_path()!
-- Back to the session's default search_path.
RESET search_path;

-- name: create_bookkeeping()#
-- The tables recording applied migrations and the installation's table names.
CREATE TABLE IF NOT EXISTS "public".omniq_migrations (
    name TEXT PRIMARY KEY,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS "public".omniq_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- name: record_migration(name, checksum)!
-- Note that a migration or function file was applied; a numbered migration also raises the
-- schema version (omniq_meta schema_version: the number of the newest migration applied).
WITH recorded AS (
    INSERT INTO "public".omniq_migrations (name, checksum) VALUES (:name::text, :checksum::text)
    ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()
    RETURNING name
)
INSERT INTO "public".omniq_meta (key, value)
SELECT 'schema_version', substring(r.name FROM '^migrations/(\d+)_')::integer::text
FROM recorded AS r WHERE r.name LIKE 'migrations/%'
ON CONFLICT (key) DO UPDATE
SET value = greatest(omniq_meta.value::integer, excluded.value::integer)::text;

-- name: get_meta(key)$
-- One installation setting.
SELECT value FROM "public".omniq_meta WHERE key = :key::text;

-- name: set_meta(key, value)!
-- Record an installation setting.
INSERT INTO "public".omniq_meta (key, value) VALUES (:key::text, :value::text)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: channel(kind)$
-- The NOTIFY channel of this installation for tasks, results or schedules.
SELECT "public".omniq_channel_v1(:kind::text);

-- name: relation_size(name)^
-- How big a table is (the planner's row estimate, -1 when never analyzed, and its bytes), to
-- decide whether a migration builds its index CONCURRENTLY; no row when there is no such table.
SELECT c.reltuples::bigint AS rows, pg_relation_size(c.oid) AS bytes
FROM pg_class AS c WHERE c.oid = to_regclass(:name::text) AND c.relkind IN ('r', 'p');

-- name: index_valid(name)$
-- Whether the index exists and is valid: NULL when absent, false when a CREATE INDEX
-- CONCURRENTLY that failed or was interrupted left it INVALID (it must be dropped and rebuilt).
SELECT i.indisvalid FROM pg_index AS i WHERE i.indexrelid = to_regclass(:name::text);

-- name: drop_index_statement(schema_name, index_name, concurrently)$
-- The statement that drops an index a failed concurrent build left INVALID, names quoted by
-- format(%I). DDL cannot take a name as a parameter and DROP INDEX CONCURRENTLY cannot run in
-- a function or a DO block, so the migrator runs the text this returns, as psql's \gexec would.
SELECT format('DROP INDEX %s IF EXISTS %I.%I',
              CASE WHEN :concurrently::boolean THEN 'CONCURRENTLY' ELSE '' END,
              :schema_name::text, :index_name::text);
