-- The read model for people: what the dashboard and its /metrics show, loaded by aiosql as
-- files.monitor and served by backend.monitor (omniq/backend/postgres/monitor.py). Read-only.
-- None of these scans task history: each reads a partial index of live tasks, a bounded time
-- range, a few rows by key, or one page of an index in its order. Changes go through the
-- stored functions, as everywhere else.

-- name: queue_gauges()
-- Per queue: tasks ready, due later, waiting, running and failed, with the oldest due time of
-- each (for ready tasks: how long the oldest has waited); the paused queues (state 'paused':
-- paused, or max_running 0); then workers alive and stale.
-- Index: tasks_pending_idx, tasks_waiting_ids_idx, tasks_running_idx, tasks_failed_idx (an
-- index-only count); omniq_workers and omniq_queues are small and read whole.
SELECT 'queue' AS kind, live.queue_name, live.state, count(*) AS tasks, min(live.due_at) AS oldest_due
FROM (
    SELECT t.queue_name, CASE WHEN t.run_at > now() THEN 'later' ELSE 'ready' END AS state,
           coalesce(t.run_at, t.created_at) AS due_at
    FROM "public"."tasks" AS t WHERE t.status = 'pending'
    UNION ALL
    SELECT t.queue_name, 'waiting', NULL FROM "public"."tasks" AS t WHERE t.status = 'waiting'
    UNION ALL
    SELECT t.queue_name, 'running', NULL FROM "public"."tasks" AS t WHERE t.status = 'running'
    UNION ALL
    SELECT t.queue_name, 'failed', NULL FROM "public"."tasks" AS t WHERE t.status = 'failed'
) AS live
GROUP BY live.queue_name, live.state
UNION ALL
SELECT 'queue', q.name, 'paused', 1, NULL
FROM "public".omniq_queues AS q WHERE q.paused OR q.max_running = 0
UNION ALL
SELECT 'workers', NULL,
       CASE WHEN now() - w.last_heartbeat > w.stale_after THEN 'stale' ELSE 'alive' END,
       count(*), NULL
FROM "public".omniq_workers AS w
GROUP BY 3;

-- name: finished_per_minute(since)
-- Tasks that finished (success or failure) since :since, per minute, queue and outcome: the
-- throughput chart and the "done in the last hour" counts. A result's created_at is when its
-- task finished, so only that time range is read. Each task's queue is looked up by its key
-- (a subquery, so the planner cannot trade the lookups for a hash of the whole tasks table);
-- it is NULL for a task purged since.
-- Index: results_status_created_idx, then tasks_pkey for each task's queue.
SELECT date_trunc('minute', r.created_at) AS minute,
       (SELECT t.queue_name FROM "public"."tasks" AS t WHERE t.id = r.task_id) AS queue_name,
       r.status, count(*) AS tasks
FROM "public"."results" AS r
WHERE r.status IN ('success', 'failure') AND r.created_at >= :since::timestamptz
GROUP BY 1, 2, 3;

-- name: without_jit()!
-- JIT compilation off for the rest of the transaction, for finished_per_minute: many cheap key
-- lookups whose estimated cost would start JIT, which then costs more than the reading itself
-- (measured with 100,000 tasks finished in the hour: 590 ms compiling for 180 ms of work).
-- Index: none (a setting).
SET LOCAL jit = off;

-- name: workers()
-- Registered workers: heartbeat, whether silent for longer than their own stale_after, the
-- threads still running task functions it gave up on, and the tasks each holds (how many, and
-- the 20 held longest).
-- Index: tasks_running_idx, twice per worker; omniq_workers is small and read whole.
SELECT w.id, w.hostname, w.pid, w.queues, w.concurrency, w.started_at, w.last_heartbeat,
       w.stale_after, now() - w.last_heartbeat > w.stale_after AS stale, w.stuck_threads,
       (SELECT count(*) FROM "public"."tasks" AS t
        WHERE t.status = 'running' AND t.worker_id = w.id) AS held,
       ARRAY(SELECT t.id FROM "public"."tasks" AS t
             WHERE t.status = 'running' AND t.worker_id = w.id
             ORDER BY t.started_at, t.id LIMIT 20) AS held_ids
FROM "public".omniq_workers AS w
ORDER BY w.started_at, w.id;

-- name: schedules(limit, runs)
-- Schedules, active ones first by next run, then paused, then finished ones, each with the
-- ids, states and creation times of the last :runs tasks it fired (newest first).
-- Index: tasks_schedule_runs_idx for the runs; the schedules table is small and read whole.
SELECT s.id, s.schedule_type, s.func, s.queue_name, s.cron_expression, s.interval_seconds,
       s.timestamp, s.status, s.created_at, s.last_run, s.next_run, s.max_runs, s.run_count,
       s.expires_at, coalesce(r.ids, '{}') AS run_ids, coalesce(r.statuses, '{}') AS run_statuses,
       coalesce(r.times, '{}') AS run_times
FROM "public"."schedules" AS s
LEFT JOIN LATERAL (
    SELECT array_agg(t.id ORDER BY t.created_at DESC) AS ids,
           array_agg(t.status ORDER BY t.created_at DESC) AS statuses,
           array_agg(t.created_at ORDER BY t.created_at DESC) AS times
    FROM (SELECT t.id, t.status, t.created_at FROM "public"."tasks" AS t
          WHERE t.metadata ? 'schedule_id' AND t.metadata ->> 'schedule_id' = s.id
          ORDER BY t.created_at DESC
          LIMIT :runs::int) AS t
) AS r ON true
ORDER BY CASE s.status WHEN 'active' THEN 0 WHEN 'paused' THEN 1 ELSE 2 END,
         s.next_run NULLS LAST, s.id
LIMIT :limit::int;

-- name: task_page(statuses, queue_name, func, created_after, created_before, search, scan, before_created_at, before_id, limit)
-- One page of tasks, newest first (created_at DESC, id DESC), strictly after the keyset cursor
-- (:before_created_at, :before_id), by the statuses in :statuses, creation time, queue, func
-- and :search (a piece of the func, or of the error of a task that ended badly, any case).
-- Each status reads at most :scan tasks past the cursor, in index order (with those tied on
-- created_at): the page size when nothing narrows the page, a bound when something does. A
-- status that reached its bound also returns the oldest task it read, as a boundary row
-- (matched false): the caller shows only matches newer than the newest boundary and carries
-- on from there, so a rare filter costs a bounded read per page instead of the whole history.
-- Live tasks come from their partial indexes (a bitmap OR, queue and func as conditions);
-- finished ones from tasks_finished_idx, read backwards one status at a time.
-- Index: tasks_pending_idx, tasks_running_idx, tasks_waiting_ids_idx, tasks_finished_idx;
-- results_pkey when searching errors.
WITH candidates AS (
    SELECT 'live' AS part, k.id, k.created_at, k.matched
    FROM (
        SELECT t.id, t.created_at,
               :search::text IS NULL OR strpos(lower(t.func), lower(:search::text)) > 0 AS matched
        FROM "public"."tasks" AS t
        WHERE ((t.status = 'pending' AND 'pending' = ANY (:statuses::text[]))
            OR (t.status = 'running' AND 'running' = ANY (:statuses::text[]))
            OR (t.status = 'waiting' AND 'waiting' = ANY (:statuses::text[])))
          AND (:queue_name::text IS NULL OR t.queue_name = :queue_name::text)
          AND (:func::text IS NULL OR t.func = :func::text)
          AND t.created_at >= coalesce(:created_after::timestamptz, '-infinity')
          AND t.created_at < coalesce(:created_before::timestamptz, 'infinity')
          AND t.created_at <= coalesce(:before_created_at::timestamptz, 'infinity')
          AND (:before_created_at::timestamptz IS NULL
               OR t.created_at < :before_created_at::timestamptz OR t.id < :before_id::text)
        ORDER BY t.created_at DESC
        FETCH FIRST (:scan::int) ROWS WITH TIES
    ) AS k
    UNION ALL
    SELECT s.status, k.id, k.created_at, k.matched
    FROM unnest('{completed,failed,cancelled,expired}'::text[]) AS s(status)
    CROSS JOIN LATERAL (
        SELECT t.id, t.created_at,
               (:queue_name::text IS NULL OR t.queue_name = :queue_name::text)
               AND (:func::text IS NULL OR t.func = :func::text)
               AND (:search::text IS NULL OR strpos(lower(t.func), lower(:search::text)) > 0
                    OR (t.status <> 'completed' AND strpos(lower(
                            (SELECT concat_ws(': ', r.error_type, r.error)
                             FROM "public"."results" AS r WHERE r.task_id = t.id)),
                        lower(:search::text)) > 0)) AS matched
        FROM "public"."tasks" AS t
        WHERE t.status = s.status AND t.status IN ('completed', 'failed', 'cancelled', 'expired')
          AND t.created_at >= coalesce(:created_after::timestamptz, '-infinity')
          AND t.created_at < coalesce(:created_before::timestamptz, 'infinity')
          AND t.created_at <= coalesce(:before_created_at::timestamptz, 'infinity')
          AND (:before_created_at::timestamptz IS NULL
               OR t.created_at < :before_created_at::timestamptz OR t.id < :before_id::text)
        ORDER BY t.created_at DESC
        FETCH FIRST (:scan::int) ROWS WITH TIES
    ) AS k
    WHERE s.status = ANY (:statuses::text[])
)
SELECT c.id, c.created_at, c.matched, c.boundary
FROM (
    SELECT k.id, k.created_at, k.matched,
           count(*) OVER (PARTITION BY k.part) >= :scan::int
               AND row_number() OVER (PARTITION BY k.part ORDER BY k.created_at, k.id) = 1 AS boundary,
           row_number() OVER (PARTITION BY k.part, k.matched
                              ORDER BY k.created_at DESC, k.id DESC) AS nth
    FROM candidates AS k
) AS c
WHERE (c.matched AND c.nth <= :limit::int) OR c.boundary;

-- name: task_rows(ids)
-- The list columns of these tasks, with the error of those that ended badly (a page of
-- task_page). Index: tasks_pkey, results_pkey.
SELECT t.id, t.queue_name, t.func, t.status, t.priority, t.created_at, t.run_at, t.started_at,
       t.finished_at, t.attempts, t.retry_count, t.max_retries, t.worker_id,
       r.error_type, left(r.error, 300) AS error
FROM "public"."tasks" AS t
LEFT JOIN "public"."results" AS r ON r.task_id = t.id
WHERE t.id = ANY (:ids::text[]);

-- name: task_detail(id)^
-- One task with its result; the result alone when the task row was purged (no row: neither).
-- Index: tasks_pkey, results_pkey.
SELECT k.id, t.id IS NOT NULL AS stored, t.queue_name, t.priority, t.status, t.func, t.args,
       t.kwargs, t.created_at, t.run_at, t.expires_at, t.retry_count, t.max_retries,
       t.retry_delay, t.dependencies, t.callbacks, t.metadata, t.task_data, t.started_at,
       t.finished_at, t.worker_id, t.attempts, t.abort_requested_at, t.abort_requested_by,
       t.abort_reason,
       r.status AS result_status, r.result, r.error, r.error_type, r.traceback,
       r.created_at AS result_created_at, r.started_at AS result_started_at, r.completed_at,
       r.expires_at AS result_expires_at, r.worker_id AS result_worker_id, r.execution_time
FROM (SELECT :id::text AS id) AS k
LEFT JOIN "public"."tasks" AS t ON t.id = k.id
LEFT JOIN "public"."results" AS r ON r.task_id = k.id
WHERE t.id IS NOT NULL OR r.task_id IS NOT NULL;

-- name: related_tasks(id, limit)
-- The tasks one task is linked to, with their states: the tasks it depends on ('parent'), the
-- tasks depending on it ('child') and the callback tasks it enqueued ('callback'), at most
-- :limit of each. Index: tasks_pkey (parents), tasks_dependents_idx (children),
-- tasks_callback_of_idx (callbacks).
(SELECT 'parent' AS relation, t.id, t.func, t.queue_name, t.status, t.created_at, NULL AS callback
 FROM "public"."tasks" AS t
 WHERE t.id IN (SELECT jsonb_array_elements_text(d.dependencies)
                FROM "public"."tasks" AS d WHERE d.id = :id::text)
 ORDER BY t.created_at, t.id LIMIT :limit::int)
UNION ALL
(SELECT 'child', t.id, t.func, t.queue_name, t.status, t.created_at, NULL
 FROM "public"."tasks" AS t
 WHERE t.dependencies <> '[]'::jsonb AND t.dependencies ? :id::text
 ORDER BY t.created_at, t.id LIMIT :limit::int)
UNION ALL
(SELECT 'callback', t.id, t.func, t.queue_name, t.status, t.created_at, t.metadata ->> 'callback'
 FROM "public"."tasks" AS t
 WHERE t.metadata ? 'callback_of' AND t.metadata ->> 'callback_of' = :id::text
 ORDER BY t.created_at, t.id LIMIT :limit::int);

-- name: task_states(ids)
-- The state of each of these tasks (the live view of the rows a browser shows).
-- Index: tasks_pkey.
SELECT t.id, t.status, t.attempts, t.worker_id, t.started_at, t.finished_at
FROM "public"."tasks" AS t
WHERE t.id = ANY (:ids::text[]);

-- name: worker_versions()
-- The OmniQ version each registered worker runs (NULL: a worker of an earlier release, whose
-- heartbeat does not tell), for the Workers tables of the dashboard and omniq status.
-- Index: none (omniq_workers is small and read whole, as by workers).
SELECT w.id, w.version FROM "public".omniq_workers AS w;
