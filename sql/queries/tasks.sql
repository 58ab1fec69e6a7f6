-- Named queries on the tasks table, loaded by aiosql. State changes are one-line calls of
-- the stored functions in sql/functions/tasks.sql; reads are plain SELECTs.
-- Optional filters are written (:x IS NULL OR col = :x) so one query serves every combination.

-- name: enqueue_tasks(tasks)
-- Insert a JSON array of tasks; returns those not left 'pending', and those not created
-- because another task holds their unique key (existing_id: that task; see omniq_enqueue_v2).
-- Index: tasks_pkey (the inserts), tasks_waiting_idx when tasks have dependencies,
-- tasks_unique_key_idx for unique keys.
SELECT id, status, existing_id FROM "public".omniq_enqueue_v2(:tasks::jsonb);

-- name: enqueue_one(id, func, created_at, queue_name, priority, args, kwargs, run_at, expires_at, retry_count, max_retries, retry_delay, callbacks, metadata, task_data)$
-- Insert one task that has no dependencies and no unique key; returns its id (see
-- omniq_enqueue_one_v1). Index: tasks_pkey.
SELECT "public".omniq_enqueue_one_v1(:id, :func, :created_at, :queue_name, :priority,
    :args::jsonb, :kwargs::jsonb, :run_at, :expires_at, :retry_count, :max_retries,
    :retry_delay, :callbacks::jsonb, :metadata::jsonb, :task_data::jsonb) AS id;

-- name: enqueue_calls(template, ids, created_at, calls)$
-- Insert one task per call of the template's function (no dependencies, no unique key);
-- returns how many (see omniq_enqueue_calls_v1). Index: tasks_pkey.
SELECT "public".omniq_enqueue_calls_v1(:template::jsonb, :ids, :created_at, :calls::jsonb) AS count;

-- name: dequeue_tasks(queues, limit, worker_id)
-- Hand out up to :limit ready tasks, marked running. Index: tasks_pending_idx.
SELECT id, queue_name, priority, status, func, args, kwargs, created_at, run_at, expires_at,
       retry_count, max_retries, retry_delay, dependencies, callbacks, metadata, task_data,
       started_at, finished_at, worker_id, attempts
FROM "public".omniq_dequeue_v1(:queues::text[], :limit::int, :worker_id::text);

-- name: finish_tasks(outcomes, worker_id)
-- Record a batch of outcomes (success, failure with retry, expiry) in one transaction; the
-- endings go through omniq_end_tasks. Index: tasks_pkey or tasks_running_idx (whichever
-- reads fewer running tasks), results_pkey for the upsert, tasks_waiting_idx for dependents.
SELECT id, status FROM "public".omniq_finish_tasks_v1(:outcomes::jsonb, :worker_id::text);

-- name: release_tasks(ids, worker_id, reason)$
-- Return running tasks to pending without counting a retry (graceful shutdown).
-- Index: tasks_pkey.
SELECT "public".omniq_release_tasks_v1(:ids::text[], :worker_id::text, :reason::text);

-- name: cancel_tasks(ids, reason)$
-- Cancel tasks that have not started (through omniq_end_tasks); returns how many.
-- Index: tasks_pkey, then tasks_waiting_idx for the tasks depending on them.
SELECT "public".omniq_cancel_tasks_v1(:ids::text[], :reason::text);

-- name: abort_task(id, reason, requested_by)$
-- Abort a task: cancel it if it has not started, else ask its worker to stop it (NOTIFY);
-- false for a finished task or an unknown id. Index: tasks_pkey.
SELECT "public".omniq_abort_task_v1(:id::text, :reason::text, :requested_by::text);

-- name: retry_tasks(ids, queue_name, func)$
-- Reset failed tasks to pending (by ids, queue or func).
-- Index: tasks_finished_idx, or tasks_failed_idx for the failed tasks of one queue.
SELECT "public".omniq_retry_tasks_v1(:ids::text[], :queue_name::text, :func::text);

-- name: get_task(id)^
-- One task by id. Index: tasks_pkey.
SELECT id, queue_name, priority, status, func, args, kwargs, created_at, run_at, expires_at,
       retry_count, max_retries, retry_delay, dependencies, callbacks, metadata, task_data,
       started_at, finished_at, worker_id, attempts
FROM "public"."tasks" WHERE id = :id::text;

-- name: list_tasks(statuses, queue_name, func, created_after, created_before, limit, offset)
-- Tasks, newest first, filtered by any of status list, queue, func and creation time.
-- A single status is also spelled out so the planner reads that status's index in order.
-- Index: tasks_finished_idx for finished statuses, tasks_pending_idx for pending,
-- tasks_running_idx for running (tasks_running_queue_idx for running in one queue); no
-- status (or waiting): a scan of the table.
SELECT id, queue_name, priority, status, func, args, kwargs, created_at, run_at, expires_at,
       retry_count, max_retries, retry_delay, dependencies, callbacks, metadata, task_data,
       started_at, finished_at, worker_id, attempts
FROM "public"."tasks"
WHERE (:statuses::text[] IS NULL OR status = ANY (:statuses::text[]))
  AND (cardinality(:statuses::text[]) IS DISTINCT FROM 1 OR status = (:statuses::text[])[1])
  AND (:queue_name::text IS NULL OR queue_name = :queue_name::text)
  AND (:func::text IS NULL OR func = :func::text)
  AND (:created_after::timestamptz IS NULL OR created_at >= :created_after::timestamptz)
  AND (:created_before::timestamptz IS NULL OR created_at < :created_before::timestamptz)
ORDER BY created_at DESC, id
LIMIT :limit::int OFFSET :offset::int;

-- name: update_task(id, queue_name, priority, status, func, args, kwargs, run_at, expires_at, retry_count, max_retries, retry_delay, dependencies, callbacks, metadata, task_data)$
-- Overwrite a task's fields from the model; false when there is no such task. A final
-- status ends the task through omniq_end_tasks. Index: tasks_pkey.
SELECT "public".omniq_update_task_v1(:id::text, :queue_name::text, :priority::int, :status::text,
    :func::text, :args::jsonb, :kwargs::jsonb, :run_at::timestamptz, :expires_at::timestamptz,
    :retry_count::int, :max_retries::int, :retry_delay::real, :dependencies::jsonb,
    :callbacks::jsonb, :metadata::jsonb, :task_data::jsonb);

-- name: delete_task(id)$
-- Delete one task (its result and events stay); false when absent; refused while a waiting
-- task depends on it. Index: tasks_pkey, tasks_waiting_idx.
SELECT "public".omniq_delete_task_v1(:id::text);

-- name: count_pending(queue_name)$
-- Pending tasks in a queue, due now or later (delayed). Index: tasks_pending_idx (an
-- index-only scan of the queue's range once autovacuum has marked the pages all-visible).
SELECT count(*) FROM "public"."tasks" WHERE status = 'pending' AND queue_name = :queue_name::text;

-- name: next_due_at(queues)$
-- When the earliest delayed task of these queues becomes due, or the next token of a
-- rate-limited queue whose bucket is empty while it has ready tasks (a worker held back by the
-- rate sleeps until then). Index: tasks_delayed_until_idx; omniq_queues_pkey and
-- tasks_pending_idx for the rate-limited queues.
SELECT least(
    (SELECT min(run_at) FROM "public"."tasks"
     WHERE status = 'pending' AND delayed AND queue_name = ANY (:queues::text[]) AND run_at > now()),
    (SELECT min(q.refilled_at + make_interval(secs => (1 - q.tokens) / q.rate))
     FROM "public".omniq_queues AS q
     WHERE q.name = ANY (:queues::text[]) AND q.rate IS NOT NULL AND q.tokens < 1
       AND NOT q.paused AND q.max_running IS DISTINCT FROM 0
       AND EXISTS (SELECT 1 FROM "public"."tasks" AS t
                   WHERE t.status = 'pending' AND t.queue_name = q.name AND NOT t.delayed)));

-- name: cleanup_expired_tasks(batch)$
-- Expire overdue tasks and delete up to :batch expired ones.
-- Index: tasks_expiry_idx, then tasks_finished_idx.
SELECT "public".omniq_cleanup_expired_tasks_v1(:batch::int);

-- name: purge_finished_tasks(older_than, batch)$
-- Delete up to :batch finished tasks older than :older_than, oldest first per status.
-- Index: tasks_finished_idx, and tasks_waiting_idx to keep tasks others depend on.
SELECT "public".omniq_purge_finished_tasks_v1(:older_than::interval, :batch::int);

-- name: requeue_stalled(older_than)$
-- Put tasks running longer than :older_than back to pending. Index: tasks_running_idx.
SELECT "public".omniq_requeue_stalled_v1(:older_than::interval);
