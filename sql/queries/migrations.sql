-- Named queries of the migrator, loaded by aiosql: the advisory lock that makes concurrent
-- starts migrate once, the schema, and the bookkeeping tables recording what was applied.

-- name: installed(schema_name)$
-- Whether OmniQ's bookkeeping table exists in the schema (no lock, no error when absent).
SELECT to_regclass(format('%I.omniq_migrations', :schema_name::text)) IS NOT NULL;

-- name: applied_migrations()
-- Every applied migration and function file with the checksum it was applied with.
SELECT name, checksum, applied_at FROM "public".omniq_migrations ORDER BY name;

-- name: lock_installation(schema_name)$
-- Serialise migrators of one schema until the transaction ends.
SELECT pg_advisory_xact_lock(hashtextextended('omniq migrate ' || :schema_name::text, 0));

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
-- Note that a migration or function file was applied.
INSERT INTO "public".omniq_migrations (name, checksum) VALUES (:name::text, :checksum::text)
ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now();

-- name: get_meta(key)$
-- One installation setting.
SELECT value FROM "public".omniq_meta WHERE key = :key::text;

-- name: set_meta(key, value)!
-- Record an installation setting.
INSERT INTO "public".omniq_meta (key, value) VALUES (:key::text, :value::text)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: channel(kind)$
-- The NOTIFY channel of this installation for tasks, results or schedules.
SELECT "public".omniq_channel(:kind::text);
