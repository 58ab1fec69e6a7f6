-- Worker liveness in PL/pgSQL: heartbeats, deregistration, and the rescue of tasks held by
-- workers whose heartbeat stopped (process killed, host lost).
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_workers#
CREATE OR REPLACE FUNCTION omniq_heartbeat(p_worker_id TEXT, p_hostname TEXT, p_pid INTEGER,
    p_queues TEXT[], p_concurrency INTEGER, p_held TEXT[], p_stale_after INTERVAL,
    p_stuck_threads INTEGER DEFAULT 0)
RETURNS TEXT[]
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Register or refresh a worker; p_stale_after is how long it may stay silent before its
-- tasks are rescued, p_stuck_threads how many of its threads still run task functions it
-- gave up (timed out). A worker whose row is gone (it was rescued as dead while alive)
-- registers again in full. Returns the ids among p_held that this worker no longer holds
-- (rescued or cancelled meanwhile): the worker stops caring about them.
-- Index: tasks_pkey (one probe per held id).
BEGIN
    INSERT INTO omniq_workers AS w (id, hostname, pid, queues, concurrency, stale_after,
        stuck_threads)
    VALUES (p_worker_id, p_hostname, p_pid, p_queues, p_concurrency, p_stale_after,
        greatest(p_stuck_threads, 0))
    ON CONFLICT ON CONSTRAINT omniq_workers_pkey DO UPDATE
    SET last_heartbeat = now(), hostname = excluded.hostname, pid = excluded.pid,
        queues = excluded.queues, concurrency = excluded.concurrency,
        stale_after = excluded.stale_after, stuck_threads = excluded.stuck_threads;
    RETURN ARRAY(
        SELECT h FROM unnest(p_held) AS h
        WHERE NOT EXISTS (SELECT 1 FROM "tasks" AS t
                          WHERE t.id = h AND t.status = 'running' AND t.worker_id = p_worker_id));
END
$$;


CREATE OR REPLACE FUNCTION omniq_worker_stopped(p_worker_id TEXT)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- A worker that shut down leaves the registry; any task it still holds goes back to pending
-- (no retry counted). Returns the number of tasks released. Index: tasks_running_idx.
DECLARE
    v_ids TEXT[];
BEGIN
    DELETE FROM omniq_workers WHERE id = p_worker_id;
    SELECT array_agg(t.id) INTO v_ids FROM "tasks" AS t
    WHERE t.status = 'running' AND t.worker_id = p_worker_id;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    RETURN omniq_release_tasks(v_ids, p_worker_id, 'worker ' || p_worker_id || ' stopped');
END
$$;

CREATE OR REPLACE FUNCTION omniq_rescue_tasks(p_caller TEXT DEFAULT NULL)
RETURNS TABLE (rescued INTEGER, next_check_at TIMESTAMPTZ)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Tasks held by workers silent for longer than their own stale_after (registered with their
-- heartbeat; 30 s for workers that never sent one) go back to pending; each rescue
-- counts as a retry, so a task that keeps killing its worker ends failed ('WorkerLost').
-- Dead workers leave the registry. Tasks dequeued without a worker id are not touched
-- (see omniq_requeue_stalled). next_check_at is when the next held task could go stale
-- (NULL: no other worker holds a task), so idle workers check then and not on a timer.
-- p_caller is the calling worker: it is alive, and never needs to rescue itself.
-- Index: tasks_running_idx.
DECLARE
    v_n INTEGER;
BEGIN
    WITH dead AS (
        SELECT w.id FROM omniq_workers AS w
        WHERE w.last_heartbeat < now() - w.stale_after AND w.id IS DISTINCT FROM p_caller
    ), stalled AS (
        SELECT t.id FROM "tasks" AS t
        WHERE t.status = 'running' AND t.worker_id IN (SELECT dead.id FROM dead)
        FOR UPDATE SKIP LOCKED
    ), rescued AS (
        UPDATE "tasks" AS t
        SET status = CASE WHEN t.retry_count < t.max_retries THEN 'pending' ELSE 'failed' END,
            retry_count = least(t.retry_count + 1, t.max_retries),
            finished_at = CASE WHEN t.retry_count < t.max_retries THEN NULL ELSE now() END,
            started_at = NULL
        FROM stalled WHERE t.id = stalled.id
        RETURNING t.id, t.status, t.queue_name, t.worker_id
    ), results_written AS (
        INSERT INTO "results" (task_id, status, error, error_type, created_at, completed_at,
            worker_id, result_data)
        SELECT r.id, 'failure', 'worker ' || r.worker_id || ' stopped responding while running the task',
               'WorkerLost', now(), now(), r.worker_id, '{}'
        FROM rescued AS r WHERE r.status = 'failed'
        ON CONFLICT (task_id) DO UPDATE SET status = 'failure', error = excluded.error,
            error_type = excluded.error_type, completed_at = excluded.completed_at
    ), logged AS (
        INSERT INTO "events" (task_id, event_type, timestamp, queue_name, worker_id, message,
            error_type)
        SELECT r.id,
               CASE r.status WHEN 'pending' THEN 'rescued' ELSE 'failed' END, now(), r.queue_name,
               r.worker_id, 'worker ' || r.worker_id || ' stopped heartbeating', 'WorkerLost'
        FROM rescued AS r
    ), forgotten AS (
        DELETE FROM omniq_workers AS w USING dead WHERE w.id = dead.id
          AND NOT EXISTS (SELECT 1 FROM "tasks" AS t
                          WHERE t.status = 'running' AND t.worker_id = w.id
                            AND t.id NOT IN (SELECT rescued.id FROM rescued))
    )
    SELECT count(*) INTO v_n FROM rescued;
    RETURN QUERY
    SELECT v_n, min(w.last_heartbeat + w.stale_after)
    FROM omniq_workers AS w
    WHERE w.id IS DISTINCT FROM p_caller
      AND EXISTS (SELECT 1 FROM "tasks" AS t WHERE t.status = 'running' AND t.worker_id = w.id);
END
$$;
