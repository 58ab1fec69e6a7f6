-- Migration 0009: small partial indexes for the dashboard's read model (sql/queries/monitor.sql),
-- so that no screen of it scans task history. Each holds only the rows it is about: a plain task
-- (no dependencies, not a callback, not fired by a schedule, not failed) enters none of them, so
-- the worker's hot path writes nothing more.
--
-- * tasks_failed_idx: failed tasks per queue, counted by an index-only scan for the overview and
--   /metrics. Without it the count reads every failed row's heap page through tasks_finished_idx.
-- * tasks_dependents_idx: which tasks name a task in their dependencies, whatever their state, for
--   the task detail's "children" (tasks_waiting_idx covers only tasks still waiting). Without GIN
--   pending list (fastupdate = off), for the reason given in migration 0002.
-- * tasks_callback_of_idx: the callback tasks a finished task enqueued (their metadata names it).
-- * tasks_schedule_runs_idx: the tasks a schedule fired, newest first (their metadata names it),
--   for the schedules screen's last runs.
--
-- CREATE INDEX IF NOT EXISTS: on a big installation, build them CONCURRENTLY under the same names
-- before upgrading (see sql/README.md, "Migrations").

-- name: migration_0009#
CREATE INDEX IF NOT EXISTS tasks_failed_idx ON "tasks" (queue_name, created_at)
    WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS tasks_dependents_idx ON "tasks" USING gin (dependencies)
    WITH (fastupdate = off) WHERE dependencies <> '[]'::jsonb;
CREATE INDEX IF NOT EXISTS tasks_callback_of_idx ON "tasks" ((metadata ->> 'callback_of'))
    WHERE metadata ? 'callback_of';
CREATE INDEX IF NOT EXISTS tasks_schedule_runs_idx ON "tasks" ((metadata ->> 'schedule_id'), created_at)
    WHERE metadata ? 'schedule_id';
