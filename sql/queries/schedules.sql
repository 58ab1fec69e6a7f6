-- Named queries on the schedules table, loaded by aiosql. Firing is done by the stored
-- functions in sql/functions/schedules.sql; these serve the schedule-storage API.

-- name: save_schedule(id, schedule_type, func, args, kwargs, queue_name, cron_expression, interval_seconds, timestamp, status, created_at, last_run, next_run, max_runs, run_count, ttl_seconds, expires_at, metadata, schedule_data)!
-- Insert or replace a schedule. Index: schedules_pkey.
INSERT INTO "public"."schedules" AS s (id, schedule_type, func, args, kwargs, queue_name,
    cron_expression, interval_seconds, timestamp, status, created_at, last_run, next_run,
    max_runs, run_count, ttl_seconds, expires_at, metadata, schedule_data)
VALUES (:id::text, :schedule_type::text, :func::text, :args::jsonb, :kwargs::jsonb,
    :queue_name::text, :cron_expression::text, :interval_seconds::real, :timestamp::timestamptz,
    :status::text, :created_at::timestamptz, :last_run::timestamptz, :next_run::timestamptz,
    :max_runs::int, :run_count::int, :ttl_seconds::real, :expires_at::timestamptz,
    :metadata::jsonb, :schedule_data::jsonb)
ON CONFLICT (id) DO UPDATE SET schedule_type = excluded.schedule_type, func = excluded.func,
    args = excluded.args, kwargs = excluded.kwargs, queue_name = excluded.queue_name,
    cron_expression = excluded.cron_expression, interval_seconds = excluded.interval_seconds,
    timestamp = excluded.timestamp, status = excluded.status, last_run = excluded.last_run,
    next_run = excluded.next_run, max_runs = excluded.max_runs, run_count = excluded.run_count,
    ttl_seconds = excluded.ttl_seconds, expires_at = excluded.expires_at,
    metadata = excluded.metadata, schedule_data = excluded.schedule_data;

-- name: get_schedule(id)^
-- One schedule by id. Index: schedules_pkey.
SELECT id, schedule_type, func, args, kwargs, queue_name, cron_expression, interval_seconds,
       timestamp, status, created_at, last_run, next_run, max_runs, run_count, ttl_seconds,
       expires_at, metadata, schedule_data
FROM "public"."schedules" WHERE id = :id::text;

-- name: list_schedules(statuses, schedule_type, queue_name, func, limit, offset)
-- Schedules by any of status list, type, queue and func, soonest next_run first.
-- Index: schedules_due_idx when listing active schedules; else a scan (a small table).
SELECT id, schedule_type, func, args, kwargs, queue_name, cron_expression, interval_seconds,
       timestamp, status, created_at, last_run, next_run, max_runs, run_count, ttl_seconds,
       expires_at, metadata, schedule_data
FROM "public"."schedules"
WHERE (:statuses::text[] IS NULL OR status = ANY (:statuses::text[]))
  AND (:schedule_type::text IS NULL OR schedule_type = :schedule_type::text)
  AND (:queue_name::text IS NULL OR queue_name = :queue_name::text)
  AND (:func::text IS NULL OR func = :func::text)
ORDER BY next_run NULLS LAST, id
LIMIT :limit::int OFFSET :offset::int;

-- name: ready_schedules(limit)
-- Active schedules that are due now, without claiming them. Index: schedules_due_idx.
SELECT id, schedule_type, func, args, kwargs, queue_name, cron_expression, interval_seconds,
       timestamp, status, created_at, last_run, next_run, max_runs, run_count, ttl_seconds,
       expires_at, metadata, schedule_data
FROM "public"."schedules"
WHERE status = 'active' AND next_run <= now()
ORDER BY next_run
LIMIT :limit::int;

-- name: delete_schedule(id)$
-- Delete one schedule; returns the id, or NULL when absent. Index: schedules_pkey.
DELETE FROM "public"."schedules" WHERE id = :id::text RETURNING id;

-- name: set_schedule_status(id, status)$
-- Pause, resume or cancel a schedule; false when it could not change. Index: schedules_pkey.
SELECT "public".omniq_set_schedule_status_v1(:id::text, :status::text);

-- name: claim_schedules(limit)
-- Lock due schedules for this transaction (SKIP LOCKED), with the database's clock (db_now,
-- the transaction's now(): the following fire times are computed from it).
-- Index: schedules_due_idx.
SELECT s.id, s.schedule_type, s.func, s.args, s.kwargs, s.queue_name, s.cron_expression,
       s.interval_seconds, s.timestamp, s.status, s.created_at, s.last_run, s.next_run,
       s.max_runs, s.run_count, s.ttl_seconds, s.expires_at, s.metadata, s.schedule_data,
       now() AS db_now
FROM "public".omniq_claim_schedules_v1(:limit::int) AS s;

-- name: fire_schedules(ids, next_runs, errors)
-- Enqueue the claimed schedules' tasks and advance them, each in a subtransaction; one row
-- per schedule: (schedule_id, task_id when fired, error when paused).
-- Index: schedules_pkey, tasks_pkey.
SELECT schedule_id, task_id, error
FROM "public".omniq_fire_schedules_v1(:ids::text[], :next_runs::timestamptz[], :errors::text[]);

-- name: next_schedule_at()$
-- When the earliest active schedule is due. Index: schedules_due_idx.
SELECT min(next_run) FROM "public"."schedules" WHERE status = 'active';

-- name: cleanup_expired_schedules(batch)$
-- Delete up to :batch expired schedules. Index: none (a scan of the small schedules table).
SELECT "public".omniq_cleanup_expired_schedules_v1(:batch::int);
