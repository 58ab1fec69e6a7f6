-- Named queries on the events table (the append-only log), loaded by aiosql. Most events are
-- written by the stored functions; these serve the event-storage API, the dashboard's
-- timeline and `omniq task ID` (a task's history: stored events and the derived life cycle).

-- name: log_events(events)!
-- Append a JSON array of events (keys = events columns). Index: events_pkey.
INSERT INTO "public"."events" (id, task_id, event_type, timestamp, message, details,
    worker_id, queue_name, schedule_id, error_type, error_message, traceback, execution_time,
    memory_usage, metadata, event_data)
SELECT coalesce(e.id, lpad(to_hex(nextval('"public".omniq_event_id_seq')), 16, '0')),
       e.task_id, e.event_type,
       coalesce(e.timestamp, now()), e.message, coalesce(e.details, '{}'), e.worker_id,
       e.queue_name, e.schedule_id, e.error_type, e.error_message, e.traceback,
       e.execution_time, e.memory_usage, coalesce(e.metadata, '{}'), coalesce(e.event_data, '{}')
FROM jsonb_populate_recordset(NULL::"public"."events", :events::jsonb) AS e;

-- name: list_events(task_id, event_types, queue_name, worker_id, after, before, limit, offset)
-- Events, newest first, by any of task, types, queue, worker and time range. OmniQ stores the
-- events that say what the task and result rows cannot (retry, rescued, requeued, failed,
-- cancelled, expired, scheduled, the user's own). A task's history (:task_id given) also
-- holds its life cycle, derived from its rows when not stored: 'enqueued' at created_at,
-- 'dequeued' (while it runs) or 'executing' (once it ended) at the start of its latest run,
-- and 'completed' from its success result; these carry details {"derived": true}. A final
-- event without a traceback shows its result's. Without :task_id, stored events only.
-- Index: events_task_idx when task_id is given (tasks_pkey, results_pkey for the derived
-- rows), else events_timestamp_idx.
SELECT h.id, h.task_id, h.event_type, h.timestamp, h.message, h.details, h.worker_id,
       h.queue_name, h.schedule_id, h.error_type, h.error_message, h.traceback,
       h.execution_time, h.memory_usage, h.metadata, h.event_data
FROM (
    (SELECT e.id, e.task_id, e.event_type, e.timestamp, e.message, e.details, e.worker_id,
            e.queue_name, e.schedule_id, e.error_type, e.error_message,
            CASE WHEN e.traceback IS NULL AND e.event_type IN ('failed', 'cancelled', 'expired')
                 THEN (SELECT r.traceback FROM "public"."results" AS r
                       WHERE r.task_id = e.task_id AND r.completed_at = e.timestamp)
                 ELSE e.traceback END AS traceback,
            e.execution_time, e.memory_usage, e.metadata, e.event_data
     FROM "public"."events" AS e
     WHERE (:task_id::text IS NULL OR e.task_id = :task_id::text)
       AND (:event_types::text[] IS NULL OR e.event_type = ANY (:event_types::text[]))
       AND (:queue_name::text IS NULL OR e.queue_name = :queue_name::text)
       AND (:worker_id::text IS NULL OR e.worker_id = :worker_id::text)
       AND (:after::timestamptz IS NULL OR e.timestamp >= :after::timestamptz)
       AND (:before::timestamptz IS NULL OR e.timestamp < :before::timestamptz)
     ORDER BY e.timestamp DESC, e.id DESC
     LIMIT :limit::int + :offset::int)
    UNION ALL
    SELECT k.id || '/' || d.n || '-' || d.event_type, k.id, d.event_type, d.at, NULL,
           '{"derived": true}', d.worker_id, t.queue_name, NULL, NULL, NULL, NULL,
           d.execution_time, NULL, '{}', '{}'
    FROM (SELECT :task_id::text AS id) AS k
    LEFT JOIN "public"."tasks" AS t ON t.id = k.id
    LEFT JOIN "public"."results" AS r ON r.task_id = k.id AND r.status = 'success'
    CROSS JOIN LATERAL (VALUES
        (1, 'enqueued', t.created_at, NULL, NULL::real, '-infinity'::timestamptz),
        (2, CASE WHEN t.status = 'running' THEN 'dequeued' ELSE 'executing' END,
         -- never before the enqueue (created_at is the producer's clock, started_at the
         -- database's or the worker's)
         CASE WHEN t.started_at IS NOT NULL THEN greatest(t.started_at, t.created_at) END,
         t.worker_id, NULL, t.started_at),
        (3, 'completed', r.completed_at, r.worker_id, r.execution_time, r.completed_at)
    ) AS d(n, event_type, at, worker_id, execution_time, stored_since)
    WHERE k.id IS NOT NULL AND d.at IS NOT NULL
      AND (:event_types::text[] IS NULL OR d.event_type = ANY (:event_types::text[]))
      AND (:queue_name::text IS NULL OR t.queue_name = :queue_name::text)
      AND (:worker_id::text IS NULL OR d.worker_id = :worker_id::text)
      AND (:after::timestamptz IS NULL OR d.at >= :after::timestamptz)
      AND (:before::timestamptz IS NULL OR d.at < :before::timestamptz)
      AND NOT EXISTS (SELECT 1 FROM "public"."events" AS s
                      WHERE s.task_id = k.id AND s.timestamp >= d.stored_since
                        AND s.event_type IN (d.event_type,
                            CASE d.event_type WHEN 'executing' THEN 'dequeued'
                                              WHEN 'dequeued' THEN 'executing' END))
) AS h
ORDER BY h.timestamp DESC, h.id DESC
LIMIT :limit::int OFFSET :offset::int;

-- name: cleanup_old_events(before, batch)$
-- Delete up to :batch events older than :before. Index: events_timestamp_idx.
SELECT "public".omniq_cleanup_old_events_v1(:before::timestamptz, :batch::int);
