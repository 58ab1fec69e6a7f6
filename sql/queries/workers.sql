-- Named queries on worker liveness, loaded by aiosql: heartbeats, deregistration, rescue.

-- name: heartbeat(worker_id, hostname, pid, queues, concurrency, held, stale_after, stuck_threads, version)$
-- Refresh (or re-create) a worker's registration, with the OmniQ version it runs; returns the
-- held task ids it lost.
-- Index: omniq_workers_pkey, tasks_pkey (one probe per held id) or tasks_running_idx (the
-- worker's running tasks, when the planner finds that cheaper).
SELECT "public".omniq_heartbeat_v2(:worker_id::text, :hostname::text, :pid::int, :queues::text[],
    :concurrency::int, :held::text[], :stale_after::interval, :stuck_threads::int,
    :version::text);

-- name: held_tasks(worker_id)
-- The ids of the tasks the database says this worker holds (running under its id), for a
-- worker to release those it never received (a dequeue whose reply was lost).
-- Index: tasks_running_idx (partial on status = 'running', keyed by worker_id).
SELECT t.id FROM "public"."tasks" AS t
WHERE t.status = 'running' AND t.worker_id = :worker_id::text;

-- name: abort_requests(worker_id)
-- The tasks this worker runs that someone asked to abort, with their attempt: read when its
-- LISTEN connection comes back (a NOTIFY sent while it was deaf is lost).
-- Index: tasks_running_idx (partial on status = 'running', keyed by worker_id).
SELECT t.id, t.attempts FROM "public"."tasks" AS t
WHERE t.status = 'running' AND t.worker_id = :worker_id::text
  AND t.abort_requested_at IS NOT NULL;

-- name: worker_stopped(worker_id)$
-- Remove a stopped worker from the registry, releasing any task it still holds.
-- Index: omniq_workers_pkey, tasks_running_idx.
SELECT "public".omniq_worker_stopped_v1(:worker_id::text);

-- name: rescue_tasks(caller)^
-- Requeue tasks of workers (other than :caller) silent for longer than their stale_after;
-- when to check next.
-- Index: tasks_running_idx.
SELECT r.rescued, r.next_check_at FROM "public".omniq_rescue_tasks_v1(:caller::text) AS r;

-- name: list_workers()
-- Registered workers and how many tasks each holds. Index: tasks_running_idx.
SELECT w.id, w.hostname, w.pid, w.queues, w.concurrency, w.started_at, w.last_heartbeat,
       w.stale_after, w.held, w.held_at, w.stuck_threads,
       (SELECT count(*) FROM "public"."tasks" AS t
             WHERE t.status = 'running' AND t.worker_id = w.id) AS running
FROM "public".omniq_workers AS w
ORDER BY w.started_at;
