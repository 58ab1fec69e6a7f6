-- Migration 0011: unique tasks, paused queues, per-queue concurrency and rate limits (issue 13,
-- parts 1-3). The functions that use them are in sql/functions/queues.sql and tasks.sql.
--
-- * omniq_queues: one row per queue that has been named by pause, resume or a limit (a queue
--   exists as soon as it is named; queues without a row have no limit and are never paused).
--   max_running caps the queue's running tasks across every worker (0 pauses it); rate is
--   tasks started per second, with a token bucket of burst tokens (tokens, refilled_at).
--   The CHECKs refuse negative limits even from psql.
-- * tasks.unique_key, tasks.unique_states: a task's uniqueness key (with its time window
--   folded in) and the states in which it counts. tasks_unique_key_idx, a partial unique
--   index over the rows in one of their own counted states, is what makes two producers
--   racing on one key end with one task (INSERT ... ON CONFLICT DO NOTHING against it).
--   Nullable columns without a default: adding them is instant.
-- * tasks_running_queue_idx: running tasks per queue, counted under max_running. Its predicate
--   names queue_name (NOT NULL anyway) so that only a query filtering on a queue can use it:
--   a query for one worker's running tasks cannot, and keeps tasks_running_idx even on an
--   empty table, where the two would otherwise cost the same.
-- * tasks_slot_freed: a task of a queue with max_running that stops running wakes the
--   queue's workers (NOTIFY), so a worker held back by the limit is not polling. Its body is
--   omniq_notify_slot_freed in sql/functions/queues.sql (a stub here, replaced there).
--
-- lock: "tasks" ACCESS EXCLUSIVE
-- lock: omniq_queues ACCESS EXCLUSIVE

-- name: migration_0011#
CREATE TABLE IF NOT EXISTS omniq_queues (
    name TEXT PRIMARY KEY,
    paused BOOLEAN NOT NULL DEFAULT false,
    max_running INTEGER CONSTRAINT omniq_queues_max_running_check CHECK (max_running >= 0),
    rate REAL CONSTRAINT omniq_queues_rate_check CHECK (rate > 0 AND rate < 'Infinity'),
    burst INTEGER CONSTRAINT omniq_queues_burst_check CHECK (burst >= 1),
    tokens REAL NOT NULL DEFAULT 0 CONSTRAINT omniq_queues_tokens_check CHECK (tokens >= 0),
    refilled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT omniq_queues_name_check CHECK (length(name) <= 200 AND name ~ '\S'
        AND name !~ '[\x01-\x1f\x7f]'),
    CONSTRAINT omniq_queues_burst_needs_rate CHECK ((rate IS NULL) = (burst IS NULL))
);

ALTER TABLE "tasks"
    ADD COLUMN IF NOT EXISTS unique_key TEXT,
    ADD COLUMN IF NOT EXISTS unique_states TEXT[];

CREATE OR REPLACE FUNCTION omniq_notify_slot_freed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;  -- replaced by sql/functions/queues.sql
END
$$;

DROP TRIGGER IF EXISTS tasks_slot_freed ON "tasks";
CREATE TRIGGER tasks_slot_freed
    AFTER UPDATE OF status ON "tasks"
    FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION omniq_notify_slot_freed();

-- omniq_add_task gains the unique_* arguments (sql/functions/sqlapi.sql): the old signature
-- would stay beside the new one and make named calls ambiguous.
DROP FUNCTION IF EXISTS omniq_add_task(TEXT, JSONB, JSONB, TEXT, INTEGER, TIMESTAMPTZ,
    TIMESTAMPTZ, INTEGER, REAL, REAL, REAL, TEXT[], JSONB, JSONB, TEXT);

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS tasks_unique_key_idx ON "tasks" (unique_key)
    WHERE unique_key IS NOT NULL AND status = ANY (unique_states);
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_running_queue_idx ON "tasks" (queue_name)
    WHERE status = 'running' AND queue_name IS NOT NULL;
