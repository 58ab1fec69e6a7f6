-- Migration 0010: the version contract (issue 11), and its first contract step.
--
-- From this release on, the Python code calls only versioned functions (omniq_dequeue_v1,
-- omniq_finish_tasks_v1, ...; sql/functions/*.sql create them), so that a later release can
-- change a function by adding _v2 while the processes of this one, still running during a
-- rolling deploy, keep calling _v1. The psql API keeps its stable, unversioned names
-- (omniq_enqueue, omniq_add_task, omniq_cancel_tasks, omniq_check_invariants, ...).
--
-- This migration drops the unversioned functions that only 0.1.0's Python code called. That
-- removes what 0.1.0 uses, so it raises min_code_version to 10: processes of 0.1.0 must be
-- stopped before it runs (upgrading from 0.1.0 is stop-the-world; from here on upgrades roll).
-- Dropping a function takes no lock on any table.
--
-- lock: omniq_meta ROW EXCLUSIVE

-- name: migration_0010#
DROP FUNCTION IF EXISTS omniq_dequeue(TEXT[], INTEGER, TEXT);
DROP FUNCTION IF EXISTS omniq_finish_tasks(JSONB, TEXT);
DROP FUNCTION IF EXISTS omniq_release_tasks(TEXT[], TEXT, TEXT);
DROP FUNCTION IF EXISTS omniq_update_task(TEXT, TEXT, INTEGER, TEXT, TEXT, JSONB, JSONB,
    TIMESTAMPTZ, TIMESTAMPTZ, INTEGER, INTEGER, REAL, JSONB, JSONB, JSONB, JSONB);
DROP FUNCTION IF EXISTS omniq_delete_task(TEXT);
DROP FUNCTION IF EXISTS omniq_heartbeat(TEXT, TEXT, INTEGER, TEXT[], INTEGER, TEXT[], INTERVAL, INTEGER);
DROP FUNCTION IF EXISTS omniq_worker_stopped(TEXT);
DROP FUNCTION IF EXISTS omniq_claim_schedules(INTEGER);
DROP FUNCTION IF EXISTS omniq_fire_schedules(TEXT[], TIMESTAMPTZ[], TEXT[]);
DROP FUNCTION IF EXISTS omniq_set_schedule_status(TEXT, TEXT);

-- The oldest code schema version that may run against this database (see sql/README.md,
-- "The version contract"). It only ever rises. omniq_meta is the migrator's own table; it is
-- created here too so that this file also runs in psql on its own.
CREATE TABLE IF NOT EXISTS omniq_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO omniq_meta (key, value) VALUES ('min_code_version', '10')
ON CONFLICT (key) DO UPDATE SET value = greatest(omniq_meta.value::integer, 10)::text;
