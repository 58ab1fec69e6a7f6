-- Migration 0001: OmniQ's tables (tasks, results, events, schedules, omniq_workers), their
-- indexes, storage settings and the triggers that send NOTIFY wake-ups.
--
-- Run by OmniQ inside one transaction after `SET LOCAL search_path TO <schema>`; from psql
-- with the default names it runs as written. Quoted "tasks", "results", "events" and
-- "schedules" are the configurable table names: OmniQ substitutes the configured ones.

-- name: migration_0001#
CREATE TABLE "tasks" (
    id TEXT PRIMARY KEY,
    queue_name TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    func TEXT NOT NULL,
    args JSONB NOT NULL,
    kwargs JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    run_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    retry_count INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL DEFAULT 3,
    retry_delay REAL NOT NULL DEFAULT 1.0,
    dependencies JSONB NOT NULL DEFAULT '[]',
    callbacks JSONB NOT NULL DEFAULT '{}',
    metadata JSONB NOT NULL DEFAULT '{}',
    task_data JSONB NOT NULL,
    -- Beyond the specification: who runs the task, since when, and how many times it was handed out.
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    worker_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT tasks_status_check CHECK (status IN
        ('pending', 'waiting', 'running', 'completed', 'failed', 'cancelled', 'expired'))
) WITH (
    -- Every task row is updated at least twice; leave room and vacuum early.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05
);

-- Serves omniq_dequeue and get_queue_size: only ready-to-run rows, in dequeue order.
CREATE INDEX tasks_dequeue_idx ON "tasks" (queue_name, priority DESC, created_at)
    WHERE status = 'pending';
-- Serves next_due_at: when the next delayed task of a queue becomes due.
CREATE INDEX tasks_delayed_idx ON "tasks" (queue_name, run_at)
    WHERE status = 'pending' AND run_at IS NOT NULL;
-- Serves omniq_expire_tasks: unfinished tasks that carry an expiry.
CREATE INDEX tasks_expiry_idx ON "tasks" (expires_at)
    WHERE status IN ('pending', 'waiting') AND expires_at IS NOT NULL;
-- Serves heartbeats and omniq_rescue_tasks: tasks held by workers.
CREATE INDEX tasks_running_idx ON "tasks" (worker_id) WHERE status = 'running';
-- Serves omniq_resolve_dependents: which waiting tasks name a finished task.
CREATE INDEX tasks_waiting_idx ON "tasks" USING gin (dependencies) WHERE status = 'waiting';
-- Serves list_tasks by a finished status and the purge of finished tasks by age. Partial, so
-- a task enters it once, when it finishes, not at every status change on the hot path.
CREATE INDEX tasks_finished_idx ON "tasks" (status, created_at)
    WHERE status IN ('completed', 'failed', 'cancelled', 'expired');

CREATE TABLE "results" (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL DEFAULT 'pending',
    result JSONB,
    error TEXT,
    error_type TEXT,
    traceback TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    worker_id TEXT,
    execution_time REAL,
    memory_usage BIGINT,
    metadata JSONB NOT NULL DEFAULT '{}',
    result_data JSONB NOT NULL
) WITH (autovacuum_vacuum_insert_scale_factor = 0.05);

-- Serves list_results by status, newest first.
CREATE INDEX results_status_created_idx ON "results" (status, created_at);
-- Serves cleanup_expired_results.
CREATE INDEX results_expires_idx ON "results" (expires_at) WHERE expires_at IS NOT NULL;

-- Event ids written by OmniQ's functions come from this sequence, zero-padded hex, so that
-- primary-key inserts land at the right edge of the index instead of at random places.
CREATE SEQUENCE omniq_event_id_seq CACHE 1000;

CREATE TABLE "events" (
    id TEXT PRIMARY KEY DEFAULT lpad(to_hex(nextval('omniq_event_id_seq')), 16, '0'),
    task_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    message TEXT,
    details JSONB NOT NULL DEFAULT '{}',
    worker_id TEXT,
    queue_name TEXT,
    schedule_id TEXT,
    error_type TEXT,
    error_message TEXT,
    traceback TEXT,
    execution_time REAL,
    memory_usage BIGINT,
    metadata JSONB NOT NULL DEFAULT '{}',
    event_data JSONB NOT NULL DEFAULT '{}'
) WITH (autovacuum_vacuum_insert_scale_factor = 0.05);

-- Serves get_events(task_id=...): a task's history in order.
CREATE INDEX events_task_idx ON "events" (task_id, timestamp);
-- Serves get_events by time range and type, and cleanup_old_events.
CREATE INDEX events_timestamp_idx ON "events" (timestamp);

CREATE TABLE "schedules" (
    id TEXT PRIMARY KEY,
    schedule_type TEXT NOT NULL,
    func TEXT NOT NULL,
    args JSONB NOT NULL DEFAULT '[]',
    kwargs JSONB NOT NULL DEFAULT '{}',
    queue_name TEXT NOT NULL DEFAULT 'default',
    cron_expression TEXT,
    interval_seconds REAL,
    timestamp TIMESTAMPTZ,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TIMESTAMPTZ NOT NULL,
    last_run TIMESTAMPTZ,
    next_run TIMESTAMPTZ,
    max_runs INTEGER,
    run_count INTEGER NOT NULL DEFAULT 0,
    ttl_seconds REAL,
    expires_at TIMESTAMPTZ,
    metadata JSONB NOT NULL DEFAULT '{}',
    schedule_data JSONB NOT NULL,
    CONSTRAINT schedules_type_check CHECK (schedule_type IN ('cron', 'interval', 'timestamp')),
    CONSTRAINT schedules_status_check CHECK (status IN
        ('active', 'paused', 'completed', 'expired', 'cancelled'))
);

-- Serves omniq_claim_schedules, get_ready_schedules and next_schedule_at.
CREATE INDEX schedules_due_idx ON "schedules" (next_run) WHERE status = 'active';

-- Workers register here and heartbeat while they hold tasks.
CREATE TABLE omniq_workers (
    id TEXT PRIMARY KEY,
    hostname TEXT,
    pid INTEGER,
    queues TEXT[] NOT NULL DEFAULT '{}',
    concurrency INTEGER,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Each worker is judged by its own timeout, never by the rescuer's.
    stale_after INTERVAL NOT NULL DEFAULT '30 seconds'
);

-- The NOTIFY channel of this installation: one per schema, so two installations in one
-- database never wake each other. kind is 'tasks', 'results' or 'schedules'.
CREATE FUNCTION omniq_channel(kind TEXT) RETURNS TEXT
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT 'omniq_' || kind || '_' || left(md5(current_schema()), 12)
$$;

-- One NOTIFY per queue per statement, whatever the number of rows inserted.
CREATE FUNCTION omniq_notify_tasks_inserted() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify(omniq_channel('tasks'), q.queue_name)
    FROM (SELECT DISTINCT queue_name FROM new_tasks WHERE status = 'pending') AS q;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_notify_inserted
    AFTER INSERT ON "tasks" REFERENCING NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION omniq_notify_tasks_inserted();

-- A task that becomes pending again (retry, rescue, dependency met) wakes its queue;
-- identical notifications in one transaction are folded into one by PostgreSQL.
CREATE FUNCTION omniq_notify_task_ready() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify(omniq_channel('tasks'), NEW.queue_name);
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_notify_ready
    AFTER UPDATE OF status ON "tasks"
    FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status <> 'pending')
    EXECUTE FUNCTION omniq_notify_task_ready();

-- Finished results wake result_storage.wait(): task ids, comma-separated, 25 per message.
CREATE FUNCTION omniq_notify_results() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify(omniq_channel('results'), string_agg(r.task_id, ','))
    FROM (SELECT task_id, (row_number() OVER ()) / 25 AS chunk
          FROM changed_results
          WHERE status IN ('success', 'failure', 'cancelled', 'expired')) AS r
    GROUP BY r.chunk;
    RETURN NULL;
END
$$;

CREATE TRIGGER results_notify_inserted
    AFTER INSERT ON "results" REFERENCING NEW TABLE AS changed_results
    FOR EACH STATEMENT EXECUTE FUNCTION omniq_notify_results();
CREATE TRIGGER results_notify_updated
    AFTER UPDATE ON "results" REFERENCING NEW TABLE AS changed_results
    FOR EACH STATEMENT EXECUTE FUNCTION omniq_notify_results();

-- Schedulers sleep until the earliest next_run; any change to that wakes them.
CREATE FUNCTION omniq_notify_schedules() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify(omniq_channel('schedules'), '');
    RETURN NULL;
END
$$;

CREATE TRIGGER schedules_notify_changed
    AFTER INSERT OR UPDATE OF next_run, status ON "schedules"
    FOR EACH STATEMENT EXECUTE FUNCTION omniq_notify_schedules();
