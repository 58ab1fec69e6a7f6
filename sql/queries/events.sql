-- Named queries on the events table (the append-only log), loaded by aiosql. Most events are
-- written by the stored functions; these serve the event-storage API.

-- name: log_events(events)!
-- Append a JSON array of events (keys = events columns). Index: events_pkey.
INSERT INTO "public"."events" (id, task_id, event_type, timestamp, message, details,
    worker_id, queue_name, schedule_id, error_type, error_message, traceback, execution_time,
    memory_usage, metadata, event_data)
SELECT coalesce(e.id, gen_random_uuid()::text), e.task_id, e.event_type,
       coalesce(e.timestamp, now()), e.message, coalesce(e.details, '{}'), e.worker_id,
       e.queue_name, e.schedule_id, e.error_type, e.error_message, e.traceback,
       e.execution_time, e.memory_usage, coalesce(e.metadata, '{}'), coalesce(e.event_data, '{}')
FROM jsonb_populate_recordset(NULL::"public"."events", :events::jsonb) AS e;

-- name: list_events(task_id, event_types, queue_name, worker_id, after, before, limit, offset)
-- Events, newest first, by any of task, types, queue, worker and time range.
-- Index: events_task_idx when task_id is given, else events_timestamp_idx.
SELECT id, task_id, event_type, timestamp, message, details, worker_id, queue_name,
       schedule_id, error_type, error_message, traceback, execution_time, memory_usage,
       metadata, event_data
FROM "public"."events"
WHERE (:task_id::text IS NULL OR task_id = :task_id::text)
  AND (:event_types::text[] IS NULL OR event_type = ANY (:event_types::text[]))
  AND (:queue_name::text IS NULL OR queue_name = :queue_name::text)
  AND (:worker_id::text IS NULL OR worker_id = :worker_id::text)
  AND (:after::timestamptz IS NULL OR timestamp >= :after::timestamptz)
  AND (:before::timestamptz IS NULL OR timestamp < :before::timestamptz)
ORDER BY timestamp DESC, id DESC
LIMIT :limit::int OFFSET :offset::int;

-- name: cleanup_old_events(before, batch)$
-- Delete up to :batch events older than :before. Index: events_timestamp_idx.
SELECT "public".omniq_cleanup_old_events_v1(:before::timestamptz, :batch::int);
