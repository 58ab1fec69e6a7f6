-- Migration 0012: abort requests on running tasks (issue 13, part 4).
--
-- abort_task / `omniq abort` / omniq_abort_task() record the request on the task row while it
-- runs: when (abort_requested_at), who asked (abort_requested_by: the caller's text, else the
-- database user) and why (abort_reason). From then on the task can only end 'cancelled':
-- whatever its worker reports, a rescue after its worker died, or a release at shutdown all
-- end it through omniq_end_tasks with an error naming who asked (sql/functions/tasks.sql,
-- omniq_abort_task_v1). The columns are cleared when an operator retries the task.
--
-- Nullable columns without a default: adding them is instant (no rewrite), but takes the
-- table's ACCESS EXCLUSIVE lock for that instant. No index: the request is read on rows
-- already in hand (by primary key, or the worker's running tasks through tasks_running_idx).
--
-- lock: "tasks" ACCESS EXCLUSIVE

-- name: migration_0012#
ALTER TABLE "tasks"
    ADD COLUMN IF NOT EXISTS abort_requested_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS abort_requested_by TEXT,
    ADD COLUMN IF NOT EXISTS abort_reason TEXT;
