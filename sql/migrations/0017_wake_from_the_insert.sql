-- Migration 0017: new tasks wake workers from omniq_insert_tasks, not from a trigger (issue 12).
--
-- Tasks enter the table only through omniq_insert_tasks (migration 0005: every role but the
-- owner). It now sends the NOTIFY itself, one per queue that got pending tasks, with the same
-- channel and payload, from the queue names its INSERT returns. The per-statement trigger
-- tasks_notify_inserted did the same from a transition table of the inserted rows: capturing
-- that table and planning the trigger's query over it cost 25-40 us of every enqueue
-- (durable single enqueues through asyncpg, 2026-12-03: 423-454 us with the trigger, 402-411
-- with the NOTIFY in the function, 380-396 with none). The trigger and its function go.
-- Processes of the previous release keep waking and being woken: the channel and payload are
-- unchanged, and their enqueues run this release's omniq_insert_tasks.
-- A row INSERTed into tasks by hand as the table owner no longer wakes workers by itself:
-- use omniq_add_task (sql/functions/sqlapi.sql), or NOTIFY the queue's channel.
-- Also in tasks.sql: omniq_dequeue_v1 counts a dequeue as the worker's heartbeat only when the
-- last one is older than a tenth of stale_after (at most 1 s), so a worker taking one task at a
-- time rewrites its omniq_workers row about once a second instead of once per task.
-- DROP TRIGGER takes the table's ACCESS EXCLUSIVE lock for that instant; the function files
-- are re-applied in the same transaction, so no enqueue commits without its NOTIFY.
--
-- lock: "tasks" ACCESS EXCLUSIVE

-- name: migration_0017#
DROP TRIGGER tasks_notify_inserted ON "tasks";
DROP FUNCTION omniq_notify_tasks_inserted();
