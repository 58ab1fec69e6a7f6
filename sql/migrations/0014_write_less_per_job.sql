-- Migration 0014: write less per job (issue 12).
--
-- * lz4 TOAST compression for the large payloads: a task's args and kwargs, a result's value
--   and traceback, an event's traceback. lz4 compresses and decompresses several times faster
--   than the default pglz, at a similar ratio on JSON and text. It applies to values written
--   from now on (and only to values past the TOAST threshold, about 2 kB); stored values stay
--   as they are and are read either way. Only where the server was built with lz4 (Debian's
--   PostgreSQL is; pgserver's is not): elsewhere the columns keep pglz.
--   SET COMPRESSION changes the catalog only (no rewrite), but takes each table's ACCESS
--   EXCLUSIVE lock for that instant. The locks are taken explicitly first, so the migration
--   takes the same locks on every server.
-- * The rest of the issue is in the function files: the life-cycle events that only restate
--   the task and result rows (enqueued, dequeued, executing, completed) are no longer stored
--   but derived when a task's history is read (sql/queries/events.sql, list_events); a
--   failed task's traceback is stored in its result only; ids generated in SQL are
--   time-ordered (omniq_new_id, the event sequence).
--
-- lock: "tasks" ACCESS EXCLUSIVE
-- lock: "results" ACCESS EXCLUSIVE
-- lock: "events" ACCESS EXCLUSIVE

-- name: migration_0014#
LOCK TABLE "tasks", "results", "events" IN ACCESS EXCLUSIVE MODE;

DO $$
BEGIN
    ALTER TABLE "tasks" ALTER COLUMN args SET COMPRESSION lz4,
        ALTER COLUMN kwargs SET COMPRESSION lz4;
    ALTER TABLE "results" ALTER COLUMN result SET COMPRESSION lz4,
        ALTER COLUMN traceback SET COMPRESSION lz4;
    ALTER TABLE "events" ALTER COLUMN traceback SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;  -- "compression method lz4 not supported": the columns keep pglz
END
$$;
