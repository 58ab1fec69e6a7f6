-- Migration 0003: a small partial index telling at once whether any task is waiting.
--
-- omniq_finish_tasks resolves dependents after every batch of finished tasks. Looking them up
-- with `dependencies ?| <every finished id>` probes the GIN index once per id, and on a small
-- table the planner prefers a sequential scan evaluating ?| on every row (measured: 38 ms of a
-- 105 ms batch of 2,000). Most installations have no waiting task at all: this index answers
-- "is there any?" with one probe of an empty index, and the lookup runs only when needed.

-- name: migration_0003#
CREATE INDEX tasks_waiting_ids_idx ON "tasks" (id) WHERE status = 'waiting';
