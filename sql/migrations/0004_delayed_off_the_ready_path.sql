-- Migration 0004: delayed work off the ready path (issue 9, defect 5).
--
-- tasks_dequeue_idx ordered every pending task of a queue by (priority DESC, created_at),
-- delayed or not, and the dequeue filtered run_at row by row: with 50,000 tasks delayed into
-- the future (or retries waiting out their backoff) one dequeue read 1,226 buffers to find a
-- ready task. A pending task now carries `delayed`: true while its run_at has not come.
-- tasks_pending_idx puts it in the index key after the queue, so the ready tasks of a queue
-- are one contiguous range in dequeue order and delayed ones are never read by the dequeue;
-- the dequeue itself clears `delayed` once run_at passes (found by tasks_delayed_until_idx).
-- The status stays 'pending' for delayed tasks, as before: only the index layout changed.
--
-- CREATE INDEX IF NOT EXISTS: on a big tasks table, build both indexes beforehand with
-- CREATE INDEX CONCURRENTLY under the same names (sql/README.md, "Migrations"); this file
-- then only adds the column (instant) and drops the two old indexes.

-- name: migration_0004#
ALTER TABLE "tasks" ADD COLUMN IF NOT EXISTS delayed BOOLEAN NOT NULL DEFAULT false;
UPDATE "tasks" SET delayed = true WHERE status = 'pending' AND run_at > now() AND NOT delayed;

-- Serves omniq_dequeue (the range delayed = false, in dequeue order), count_pending and
-- list_tasks for pending.
CREATE INDEX IF NOT EXISTS tasks_pending_idx
    ON "tasks" (queue_name, delayed, priority DESC, created_at) WHERE status = 'pending';
-- Serves next_due_at and the dequeue's promotion of delayed tasks whose run_at has come.
CREATE INDEX IF NOT EXISTS tasks_delayed_until_idx
    ON "tasks" (queue_name, run_at) WHERE status = 'pending' AND delayed;

-- IF NOT EXISTS would also skip a table of that name (a configured table name): refuse it.
DO $check$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class AS c
               WHERE c.relnamespace = (SELECT n.oid FROM pg_namespace AS n WHERE n.nspname = current_schema())
                 AND c.relkind <> 'i'
                 AND c.relname IN ('tasks_pending_idx', 'tasks_delayed_until_idx')) THEN
        RAISE EXCEPTION 'relation "tasks_pending_idx" or "tasks_delayed_until_idx" already exists and is not an index'
            USING ERRCODE = 'duplicate_table';
    END IF;
END
$check$;

DROP INDEX IF EXISTS tasks_dequeue_idx;
DROP INDEX IF EXISTS tasks_delayed_idx;
