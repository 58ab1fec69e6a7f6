-- Maintenance a DBA or operator runs from psql, and that the Python API and CLI call too:
-- cleanup of expired rows, purge of finished tasks and old results, requeue and retry, the
-- queue and worker overviews. Deleting functions work in bounded batches (p_batch rows per
-- call, one short transaction each): call them until they return less than p_batch, or CALL
-- the procedures omniq_purge and omniq_cleanup, which do that and commit after every batch.
-- See sql/README.md for recipes.
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_maintenance#
CREATE OR REPLACE FUNCTION omniq_cleanup_expired_tasks(p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Expire unstarted tasks past expires_at (through omniq_end_tasks: result, event, callbacks,
-- dependents), then delete up to p_batch expired tasks. Index: tasks_expiry_idx, then
-- tasks_finished_idx.
DECLARE
    v_n INTEGER;
BEGIN
    PERFORM omniq_expire_tasks(NULL);
    DELETE FROM "tasks" WHERE ctid = ANY (ARRAY(
        SELECT t.ctid FROM "tasks" AS t WHERE t.status = 'expired' LIMIT p_batch));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

CREATE OR REPLACE FUNCTION omniq_cleanup_expired_results(p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Delete up to p_batch results whose expires_at has passed. Index: results_expires_idx.
DECLARE
    v_n INTEGER;
BEGIN
    DELETE FROM "results" WHERE ctid = ANY (ARRAY(
        SELECT r.ctid FROM "results" AS r WHERE r.expires_at <= now() LIMIT p_batch));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

CREATE OR REPLACE FUNCTION omniq_cleanup_old_events(p_before TIMESTAMPTZ, p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Delete up to p_batch events older than p_before. Index: events_timestamp_idx.
DECLARE
    v_n INTEGER;
BEGIN
    DELETE FROM "events" WHERE ctid = ANY (ARRAY(
        SELECT e.ctid FROM "events" AS e WHERE e.timestamp < p_before LIMIT p_batch));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

CREATE OR REPLACE FUNCTION omniq_cleanup_expired_schedules(p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Delete up to p_batch schedules that expired: status 'expired', or active or paused past
-- expires_at (or created_at + ttl_seconds). The schedules table is small: a scan is fine.
DECLARE
    v_n INTEGER;
BEGIN
    DELETE FROM "schedules" WHERE ctid = ANY (ARRAY(
        SELECT s.ctid FROM "schedules" AS s
        WHERE s.status = 'expired'
           OR (s.status IN ('active', 'paused')
               AND coalesce(s.expires_at, s.created_at + make_interval(secs => s.ttl_seconds)) <= now())
        LIMIT p_batch));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

CREATE OR REPLACE FUNCTION omniq_purge_finished_tasks(p_older_than INTERVAL, p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Delete up to p_batch finished tasks (completed, failed, cancelled, expired) created more
-- than p_older_than ago, oldest first within each status; their results and events stay
-- until their own cleanup. A task that a waiting task still depends on is kept.
-- Index: tasks_finished_idx, read in its own order (status, created_at), so each batch is
-- a plain index scan that stops after p_batch rows, also in a cached generic plan;
-- tasks_waiting_idx for the dependency check.
DECLARE
    v_n INTEGER;
BEGIN
    DELETE FROM "tasks" WHERE ctid = ANY (ARRAY(
        SELECT t.ctid FROM "tasks" AS t
        WHERE t.status IN ('completed', 'failed', 'cancelled', 'expired')
          AND t.created_at < now() - p_older_than
          AND NOT EXISTS (SELECT 1 FROM "tasks" AS w
                          WHERE w.status = 'waiting' AND w.dependencies ? t.id)
        ORDER BY t.status, t.created_at
        LIMIT p_batch));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

CREATE OR REPLACE FUNCTION omniq_requeue_stalled(p_older_than INTERVAL)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Put tasks running for longer than p_older_than back to pending, whoever holds them
-- (including tasks dequeued through the API without a worker id). No retry is counted.
-- Index: tasks_running_idx (partial on status = 'running').
DECLARE
    v_ids TEXT[];
BEGIN
    SELECT array_agg(t.id) INTO v_ids FROM "tasks" AS t
    WHERE t.status = 'running' AND t.started_at < now() - p_older_than;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    -- a task someone asked to abort ends 'cancelled' instead of running again
    PERFORM omniq_end_aborted(v_ids, NULL,
        'running longer than ' || p_older_than || '; ended by omniq_requeue_stalled');
    WITH requeued AS (
        UPDATE "tasks" AS t SET status = 'pending', worker_id = NULL, started_at = NULL,
            delayed = coalesce(t.run_at > now(), false)
        WHERE t.id = ANY (v_ids) AND t.status = 'running'
        RETURNING t.id, t.queue_name, t.worker_id
    )
    INSERT INTO "events" (task_id, event_type, timestamp, queue_name, message)
    SELECT r.id, 'requeued', now(), r.queue_name,
           'running longer than ' || p_older_than || '; requeued by omniq_requeue_stalled'
    FROM requeued AS r;
    RETURN cardinality(v_ids);
END
$$;

CREATE OR REPLACE FUNCTION omniq_retry_tasks(p_ids TEXT[] DEFAULT NULL, p_queue TEXT DEFAULT NULL,
    p_func TEXT DEFAULT NULL)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Give failed (and cancelled or expired) tasks a fresh start: pending now, retry_count 0,
-- expiry cleared, result deleted (the next ending writes a new one). The only way out of a
-- final status. Callbacks already enqueued are not enqueued again when it ends again (one per
-- task and kind); tasks cancelled because it failed stay cancelled. Select by ids, by queue,
-- by func, or any combination (all NULL: every failed task). Index: tasks_finished_idx, or
-- tasks_failed_idx for the failed tasks of one queue.
DECLARE
    v_n INTEGER;
BEGIN
    WITH retried AS (
        UPDATE "tasks" AS t
        SET status = 'pending', delayed = false, retry_count = 0, run_at = NULL, expires_at = NULL,
            worker_id = NULL, started_at = NULL, finished_at = NULL,
            abort_requested_at = NULL, abort_requested_by = NULL, abort_reason = NULL
        WHERE (CASE WHEN p_ids IS NULL THEN t.status = 'failed'
                    ELSE t.status IN ('failed', 'cancelled', 'expired') AND t.id = ANY (p_ids) END)
          AND (p_queue IS NULL OR t.queue_name = p_queue)
          AND (p_func IS NULL OR t.func = p_func)
        RETURNING t.id, t.queue_name
    ), forgotten AS (
        DELETE FROM "results" AS r USING retried WHERE r.task_id = retried.id
    )
    INSERT INTO "events" (task_id, event_type, timestamp, queue_name, message)
    SELECT r.id, 'requeued', now(), r.queue_name, 'retried by operator'
    FROM retried AS r;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

CREATE OR REPLACE VIEW omniq_queue_overview AS
-- Per queue: tasks ready, pending for a later run_at, waiting, running and failed (kept until
-- purged); tasks completed, and cancelled or expired, in the last hour (their results); the
-- age of the oldest ready task. It reads live tasks and the last hour only, never the whole
-- history: at 10,000,000 finished tasks it costs what it costs at none.
-- Index: tasks_pending_idx, tasks_waiting_ids_idx, tasks_running_idx, tasks_failed_idx,
-- results_status_created_idx (then tasks_pkey for each result's queue).
SELECT s.queue_name,
       count(*) FILTER (WHERE s.state = 'ready') AS ready,
       count(*) FILTER (WHERE s.state = 'later') AS scheduled_later,
       count(*) FILTER (WHERE s.state = 'waiting') AS waiting,
       count(*) FILTER (WHERE s.state = 'running') AS running,
       count(*) FILTER (WHERE s.state = 'completed') AS completed,
       count(*) FILTER (WHERE s.state = 'failed') AS failed,
       count(*) FILTER (WHERE s.state = 'cancelled_or_expired') AS cancelled_or_expired,
       now() - min(s.due_at) FILTER (WHERE s.state = 'ready') AS oldest_ready_age
FROM (
    SELECT t.queue_name, CASE WHEN t.run_at > now() THEN 'later' ELSE 'ready' END AS state,
           coalesce(t.run_at, t.created_at) AS due_at
    FROM "tasks" AS t WHERE t.status = 'pending'
    UNION ALL
    SELECT t.queue_name, 'waiting', NULL FROM "tasks" AS t WHERE t.status = 'waiting'
    UNION ALL
    SELECT t.queue_name, 'running', NULL FROM "tasks" AS t WHERE t.status = 'running'
    UNION ALL
    SELECT t.queue_name, 'failed', NULL FROM "tasks" AS t WHERE t.status = 'failed'
    UNION ALL
    SELECT q.queue_name,
           CASE r.status WHEN 'success' THEN 'completed' ELSE 'cancelled_or_expired' END, NULL
    FROM "results" AS r
    -- each task's queue by its key (a result whose task was purged since is left out);
    -- OFFSET 0 keeps it a lookup per result, never a join reading the whole tasks table
    CROSS JOIN LATERAL (SELECT t.queue_name FROM "tasks" AS t WHERE t.id = r.task_id
                        OFFSET 0) AS q
    WHERE r.status IN ('success', 'cancelled', 'expired')
      AND r.created_at >= now() - interval '1 hour'
) AS s
GROUP BY s.queue_name;

CREATE OR REPLACE FUNCTION omniq_purge_old_results(p_older_than INTERVAL, p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Delete up to p_batch results without an expiry (tasks enqueued without result_ttl keep
-- theirs forever otherwise) stored more than p_older_than ago. Results with an expires_at
-- are left to omniq_cleanup_expired_results. Index: results_status_created_idx, read in its
-- own order (status, created_at) and stopping after p_batch rows.
DECLARE
    v_n INTEGER;
BEGIN
    DELETE FROM "results" WHERE ctid = ANY (ARRAY(
        SELECT r.ctid FROM "results" AS r
        WHERE r.created_at < now() - p_older_than AND r.expires_at IS NULL
        ORDER BY r.status, r.created_at
        LIMIT p_batch));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

CREATE OR REPLACE PROCEDURE omniq_purge(p_older_than INTERVAL, p_batch INTEGER DEFAULT 5000)
LANGUAGE plpgsql AS $$
-- The retention pass, for psql: CALL omniq_purge('30 days'). Deletes finished tasks, results
-- without an expiry and events, all older than p_older_than, in batches of p_batch rows, each
-- batch committed at once: no lock is held for long and autovacuum can reuse the space while
-- it runs. Progress is reported as NOTICEs. CALL it outside a transaction block (psql's
-- default). A procedure with a SET clause cannot COMMIT, so this one has none and names
-- every function with its schema. Index: those of the three functions it calls.
DECLARE
    v_before TIMESTAMPTZ := now() - p_older_than;
    v_n INTEGER;
    v_tasks BIGINT := 0;
    v_results BIGINT := 0;
    v_events BIGINT := 0;
BEGIN
    IF p_older_than IS NULL OR p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'omniq_purge needs an interval and a positive batch size'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        v_n := "public".omniq_purge_finished_tasks(p_older_than, p_batch);
        COMMIT;
        v_tasks := v_tasks + v_n;
        EXIT WHEN v_n < p_batch;
        RAISE NOTICE 'omniq_purge: % finished tasks deleted so far', v_tasks;
    END LOOP;
    LOOP
        v_n := "public".omniq_purge_old_results(p_older_than, p_batch);
        COMMIT;
        v_results := v_results + v_n;
        EXIT WHEN v_n < p_batch;
        RAISE NOTICE 'omniq_purge: % results deleted so far', v_results;
    END LOOP;
    LOOP
        v_n := "public".omniq_cleanup_old_events(v_before, p_batch);
        COMMIT;
        v_events := v_events + v_n;
        EXIT WHEN v_n < p_batch;
        RAISE NOTICE 'omniq_purge: % events deleted so far', v_events;
    END LOOP;
    RAISE NOTICE 'omniq_purge: deleted % finished tasks, % results, % events older than %',
        v_tasks, v_results, v_events, p_older_than;
END
$$;

CREATE OR REPLACE PROCEDURE omniq_cleanup(p_events_older_than INTERVAL DEFAULT NULL,
    p_batch INTEGER DEFAULT 5000)
LANGUAGE plpgsql AS $$
-- The four cleanup operations of `omniq cleanup`, for psql: expired tasks, expired results,
-- events older than p_events_older_than (skipped when NULL) and expired schedules, in batches
-- of p_batch rows, each committed at once, with NOTICEs. CALL it outside a transaction block.
-- No SET clause (it would forbid COMMIT): every function is named with its schema.
-- Index: those of the four functions it calls.
DECLARE
    v_before TIMESTAMPTZ := now() - p_events_older_than;
    v_n INTEGER;
    v_tasks BIGINT := 0;
    v_results BIGINT := 0;
    v_events BIGINT := 0;
    v_schedules BIGINT := 0;
BEGIN
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'omniq_cleanup needs a positive batch size'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        v_n := "public".omniq_cleanup_expired_tasks(p_batch);
        COMMIT;
        v_tasks := v_tasks + v_n;
        EXIT WHEN v_n < p_batch;
        RAISE NOTICE 'omniq_cleanup: % expired tasks deleted so far', v_tasks;
    END LOOP;
    LOOP
        v_n := "public".omniq_cleanup_expired_results(p_batch);
        COMMIT;
        v_results := v_results + v_n;
        EXIT WHEN v_n < p_batch;
        RAISE NOTICE 'omniq_cleanup: % expired results deleted so far', v_results;
    END LOOP;
    WHILE v_before IS NOT NULL LOOP
        v_n := "public".omniq_cleanup_old_events(v_before, p_batch);
        COMMIT;
        v_events := v_events + v_n;
        EXIT WHEN v_n < p_batch;
        RAISE NOTICE 'omniq_cleanup: % old events deleted so far', v_events;
    END LOOP;
    LOOP
        v_n := "public".omniq_cleanup_expired_schedules(p_batch);
        COMMIT;
        v_schedules := v_schedules + v_n;
        EXIT WHEN v_n < p_batch;
    END LOOP;
    RAISE NOTICE 'omniq_cleanup: deleted % expired tasks, % expired results, % old events, % expired schedules',
        v_tasks, v_results, v_events, v_schedules;
END
$$;

CREATE OR REPLACE VIEW omniq_worker_overview AS
-- Registered workers: how long since each one's last heartbeat, whether that is longer than
-- it may stay silent (its tasks are then rescued), and how many tasks it holds now.
-- Index: tasks_running_idx, once per worker.
SELECT w.id, w.hostname, w.pid, w.queues, w.concurrency, w.started_at, w.last_heartbeat,
       now() - w.last_heartbeat AS heartbeat_age, w.stale_after,
       now() - w.last_heartbeat > w.stale_after AS stale,
       (SELECT count(*) FROM "tasks" AS t
        WHERE t.status = 'running' AND t.worker_id = w.id) AS running
FROM omniq_workers AS w;

-- Protocol version 1 of the maintenance functions above: what the Python API and the CLI call.
-- The names above are the psql API; these keep the Python code's calls fixed while a later
-- release changes those (see sql/README.md, "The version contract").
CREATE OR REPLACE FUNCTION omniq_cleanup_expired_tasks_v1(p_batch INTEGER) RETURNS INTEGER
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_cleanup_expired_tasks(p_batch) $$;

CREATE OR REPLACE FUNCTION omniq_cleanup_expired_results_v1(p_batch INTEGER) RETURNS INTEGER
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_cleanup_expired_results(p_batch) $$;

CREATE OR REPLACE FUNCTION omniq_cleanup_old_events_v1(p_before TIMESTAMPTZ, p_batch INTEGER)
RETURNS INTEGER
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_cleanup_old_events(p_before, p_batch) $$;

CREATE OR REPLACE FUNCTION omniq_cleanup_expired_schedules_v1(p_batch INTEGER) RETURNS INTEGER
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_cleanup_expired_schedules(p_batch) $$;

CREATE OR REPLACE FUNCTION omniq_purge_finished_tasks_v1(p_older_than INTERVAL, p_batch INTEGER)
RETURNS INTEGER
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_purge_finished_tasks(p_older_than, p_batch) $$;

CREATE OR REPLACE FUNCTION omniq_requeue_stalled_v1(p_older_than INTERVAL) RETURNS INTEGER
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_requeue_stalled(p_older_than) $$;

CREATE OR REPLACE FUNCTION omniq_retry_tasks_v1(p_ids TEXT[], p_queue TEXT, p_func TEXT)
RETURNS INTEGER
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_retry_tasks(p_ids, p_queue, p_func) $$;
