-- Named queries on the results table, loaded by aiosql. Workers write results through
-- omniq_finish_tasks_v1; these serve the result-storage API.

-- name: upsert_result(task_id, status, result, error, error_type, traceback, created_at, started_at, completed_at, expires_at, worker_id, execution_time, memory_usage, metadata, result_data)!
-- Store a result, replacing any earlier one for the task. Index: results_pkey.
INSERT INTO "public"."results" AS r (task_id, status, result, error, error_type, traceback,
    created_at, started_at, completed_at, expires_at, worker_id, execution_time, memory_usage,
    metadata, result_data)
VALUES (:task_id::text, :status::text, :result::jsonb, :error::text, :error_type::text,
    :traceback::text, :created_at::timestamptz, :started_at::timestamptz,
    :completed_at::timestamptz, :expires_at::timestamptz, :worker_id::text,
    :execution_time::real, :memory_usage::bigint, :metadata::jsonb, :result_data::jsonb)
ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, result = excluded.result,
    error = excluded.error, error_type = excluded.error_type, traceback = excluded.traceback,
    created_at = excluded.created_at, started_at = excluded.started_at,
    completed_at = excluded.completed_at, expires_at = excluded.expires_at,
    worker_id = excluded.worker_id, execution_time = excluded.execution_time,
    memory_usage = excluded.memory_usage, metadata = excluded.metadata,
    result_data = excluded.result_data;

-- name: get_result(task_id)^
-- One result by task id. Index: results_pkey.
SELECT task_id, status, result, error, error_type, traceback, created_at, started_at,
       completed_at, expires_at, worker_id, execution_time, memory_usage, metadata,
       result_data
FROM "public"."results" WHERE task_id = :task_id::text;

-- name: list_results(statuses, worker_id, created_after, created_before, limit, offset)
-- Results, newest first, by any of status list, worker and creation time.
-- A single status is also spelled out so the planner reads that status's index in order.
-- Index: results_status_created_idx when statuses is given.
SELECT task_id, status, result, error, error_type, traceback, created_at, started_at,
       completed_at, expires_at, worker_id, execution_time, memory_usage, metadata,
       result_data
FROM "public"."results"
WHERE (:statuses::text[] IS NULL OR status = ANY (:statuses::text[]))
  AND (cardinality(:statuses::text[]) IS DISTINCT FROM 1 OR status = (:statuses::text[])[1])
  AND (:worker_id::text IS NULL OR worker_id = :worker_id::text)
  AND (:created_after::timestamptz IS NULL OR created_at >= :created_after::timestamptz)
  AND (:created_before::timestamptz IS NULL OR created_at < :created_before::timestamptz)
ORDER BY created_at DESC, task_id
LIMIT :limit::int OFFSET :offset::int;

-- name: delete_result(task_id)$
-- Delete one result; returns the task id, or NULL when absent. Index: results_pkey.
DELETE FROM "public"."results" WHERE task_id = :task_id::text RETURNING task_id;

-- name: cleanup_expired_results(batch)$
-- Delete up to :batch results past expires_at. Index: results_expires_idx.
SELECT "public".omniq_cleanup_expired_results_v1(:batch::int);
