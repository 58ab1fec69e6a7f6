-- Migration 0018: one task, one typed call: omniq_enqueue_one_v1 (issue 12).
--
-- enqueue() of a task with no dependencies and no unique key (most of them) calls
-- omniq_enqueue_one_v1 (sql/functions/tasks.sql) with the task's columns as typed arguments,
-- and it runs one INSERT and one NOTIFY. omniq_enqueue_v2 took the same task as a JSON
-- array through omniq_insert_tasks, whose batch path (a nested PL/pgSQL call, a CTE over
-- the inserted rows, aggregates of their queues and waiting ids) is what a single task paid
-- for. pgbench, one client, the same task, medians of 5-7 alternating runs (2026-12-03): 395
-- us a call through omniq_enqueue_v2, 321 through omniq_enqueue_one_v1 (durable); 195 against
-- 151 us with synchronous_commit off. Batches, dependencies and unique keys keep going through
-- omniq_enqueue_v2, which processes of the previous release also call.
-- The id and queue name checks both entry points make are now one inlined expression each
-- (omniq_checked_task_id, omniq_checked_queue_name), so they cannot drift apart.
-- Functions only; no table is touched.
--
-- lock: none

-- name: migration_0018#
SELECT 1;
