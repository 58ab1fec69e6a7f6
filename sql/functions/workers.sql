-- Worker liveness in PL/pgSQL: heartbeats, deregistration, and the rescue of tasks held by
-- workers whose heartbeat stopped (process killed, host lost). The worker role calls these
-- SECURITY DEFINER functions and holds no write privilege on any table (sql/roles.sql).
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_workers#
CREATE OR REPLACE FUNCTION omniq_heartbeat_v2(p_worker_id TEXT, p_hostname TEXT, p_pid INTEGER,
    p_queues TEXT[], p_concurrency INTEGER, p_held TEXT[], p_stale_after INTERVAL,
    p_stuck_threads INTEGER, p_version TEXT)
RETURNS TEXT[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Register or refresh a worker; p_stale_after is how long it may stay silent before its
-- tasks are rescued, p_stuck_threads how many of its threads still run task functions it
-- gave up (timed out), p_version the OmniQ version it runs (NULL: not told). A worker whose
-- row is gone (it was rescued as dead while alive) registers again in full. Returns the ids
-- among p_held that this worker no longer holds (rescued or cancelled meanwhile): the worker
-- stops caring about them. p_held is kept (held, held_at) for omniq_check_invariants.
-- Index: tasks_pkey (one probe per held id).
BEGIN
    INSERT INTO omniq_workers AS w (id, hostname, pid, queues, concurrency, stale_after,
        stuck_threads, held, held_at, version)
    VALUES (p_worker_id, p_hostname, p_pid, p_queues, p_concurrency, p_stale_after,
        greatest(p_stuck_threads, 0), coalesce(p_held, '{}'), now(), p_version)
    ON CONFLICT ON CONSTRAINT omniq_workers_pkey DO UPDATE
    SET last_heartbeat = now(), hostname = excluded.hostname, pid = excluded.pid,
        queues = excluded.queues, concurrency = excluded.concurrency,
        stale_after = excluded.stale_after, stuck_threads = excluded.stuck_threads,
        held = excluded.held, held_at = excluded.held_at, version = excluded.version;
    RETURN ARRAY(
        SELECT h FROM unnest(p_held) AS h
        WHERE NOT EXISTS (SELECT 1 FROM "tasks" AS t
                          WHERE t.id = h AND t.status = 'running' AND t.worker_id = p_worker_id));
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_heartbeat_v2(TEXT, TEXT, INTEGER, TEXT[], INTEGER, TEXT[], INTERVAL,
    INTEGER, TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_heartbeat_v1(p_worker_id TEXT, p_hostname TEXT, p_pid INTEGER,
    p_queues TEXT[], p_concurrency INTEGER, p_held TEXT[], p_stale_after INTERVAL,
    p_stuck_threads INTEGER DEFAULT 0)
RETURNS TEXT[]
LANGUAGE sql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- The previous release's heartbeat (kept for its workers during a rolling deploy): v2 with
-- no version.
SELECT omniq_heartbeat_v2(p_worker_id, p_hostname, p_pid, p_queues, p_concurrency, p_held,
    p_stale_after, p_stuck_threads, NULL);
$$;
REVOKE EXECUTE ON FUNCTION omniq_heartbeat_v1(TEXT, TEXT, INTEGER, TEXT[], INTEGER, TEXT[], INTERVAL, INTEGER)
    FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_worker_stopped_v1(p_worker_id TEXT)
RETURNS INTEGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
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
    RETURN omniq_release_tasks_v1(v_ids, p_worker_id, 'worker ' || p_worker_id || ' stopped');
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_worker_stopped_v1(TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_rescue_tasks(p_caller TEXT DEFAULT NULL)
RETURNS TABLE (rescued INTEGER, next_check_at TIMESTAMPTZ)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Tasks held by workers silent for longer than their own stale_after (registered with their
-- heartbeat) go back to pending, delayed by nothing; each rescue counts as a retry, and a
-- task out of retries ends 'failed' with WorkerLost through omniq_end_tasks (result, event,
-- callbacks, dependents). A task someone asked to abort is not run again: it ends there too,
-- 'cancelled' (omniq_end_tasks honours the request: the "rescue guard"). A worker id with no
-- registration (a dequeue through the API with a worker id, or a worker whose row a rescue
-- removed and that has not heartbeated since) is judged by the default 30 s from the task's
-- start. Dead workers leave the registry. Tasks
-- dequeued without a worker id are not touched (see omniq_requeue_stalled).
-- Then the bounded safety net for waiting tasks (omniq_recheck_waiting).
-- next_check_at is when the next held task could go stale (NULL: no other worker holds a
-- task), so idle workers check then and not on a timer. p_caller is the calling worker: it
-- is alive, and never needs to rescue itself. A deadlock in a cascade is retried here.
-- Index: tasks_running_idx.
DECLARE
    v_ids TEXT[];
    v_holders TEXT[];
    v_attempts INTEGER[];
    v_again BOOLEAN[];
    v_n INTEGER;
    v_ends JSONB;
    v_try INTEGER := 0;
BEGIN
    LOOP
        BEGIN
            v_n := 0;
            SELECT array_agg(s.id), array_agg(s.worker_id), array_agg(s.attempts),
                   array_agg(s.again)
            INTO v_ids, v_holders, v_attempts, v_again
            FROM (SELECT t.id, t.worker_id, t.attempts,
                         t.retry_count < t.max_retries AND t.abort_requested_at IS NULL AS again
                  FROM "tasks" AS t
                  WHERE t.status = 'running' AND t.worker_id IS DISTINCT FROM p_caller
                    AND (t.worker_id IN (SELECT w.id FROM omniq_workers AS w
                                         WHERE w.last_heartbeat < now() - w.stale_after)
                         OR (t.started_at < now() - interval '30 seconds'
                             AND NOT EXISTS (SELECT 1 FROM omniq_workers AS w
                                             WHERE w.id = t.worker_id)))
                  ORDER BY t.id
                  FOR NO KEY UPDATE SKIP LOCKED) AS s;
            IF v_ids IS NOT NULL THEN
                WITH requeued AS (
                    UPDATE "tasks" AS t
                    SET status = 'pending', retry_count = t.retry_count + 1, delayed = false,
                        started_at = NULL, finished_at = NULL
                    FROM unnest(v_ids, v_again) AS s(id, again)
                    WHERE t.id = s.id AND s.again AND t.status = 'running'
                    RETURNING t.id, t.queue_name, t.worker_id
                ), logged AS (
                    INSERT INTO "events" (task_id, event_type, timestamp, queue_name, worker_id,
                        message, error_type)
                    SELECT r.id, 'rescued', now(), r.queue_name, r.worker_id,
                           'worker ' || r.worker_id || ' stopped heartbeating', 'WorkerLost'
                    FROM requeued AS r
                )
                SELECT count(*) INTO v_n FROM requeued;
                SELECT jsonb_agg(jsonb_build_object('id', s.id, 'attempt', s.attempts,
                           'status', 'failed', 'worker_id', s.holder, 'error_type', 'WorkerLost',
                           'error', 'worker ' || s.holder || ' stopped responding while running the task',
                           'message', 'worker ' || s.holder || ' stopped heartbeating'))
                INTO v_ends
                FROM unnest(v_ids, v_holders, v_attempts, v_again) AS s(id, holder, attempts, again)
                WHERE NOT s.again;
                IF v_ends IS NOT NULL THEN
                    SELECT v_n + count(*) INTO v_n FROM omniq_end_tasks(v_ends, '{running}');
                END IF;
            END IF;
            DELETE FROM omniq_workers AS w
            WHERE w.last_heartbeat < now() - w.stale_after AND w.id IS DISTINCT FROM p_caller
              AND NOT EXISTS (SELECT 1 FROM "tasks" AS t
                              WHERE t.status = 'running' AND t.worker_id = w.id);
            PERFORM omniq_recheck_waiting();
            EXIT;
        EXCEPTION WHEN deadlock_detected THEN
            v_try := omniq_after_deadlock(v_try);
        END;
    END LOOP;
    RETURN QUERY
    SELECT v_n, least(
        (SELECT min(w.last_heartbeat + w.stale_after) FROM omniq_workers AS w
         WHERE w.id IS DISTINCT FROM p_caller
           AND EXISTS (SELECT 1 FROM "tasks" AS t WHERE t.status = 'running' AND t.worker_id = w.id)),
        (SELECT min(t.started_at) + interval '30 seconds' FROM "tasks" AS t
         WHERE t.status = 'running' AND t.worker_id IS DISTINCT FROM p_caller
           AND NOT EXISTS (SELECT 1 FROM omniq_workers AS w WHERE w.id = t.worker_id)));
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_rescue_tasks(TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_rescue_tasks_v1(p_caller TEXT)
RETURNS TABLE (rescued INTEGER, next_check_at TIMESTAMPTZ)
LANGUAGE sql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Protocol version 1 of omniq_rescue_tasks (what workers call). SECURITY DEFINER, not PUBLIC.
    SELECT r.rescued, r.next_check_at FROM omniq_rescue_tasks(p_caller) AS r
$$;
REVOKE EXECUTE ON FUNCTION omniq_rescue_tasks_v1(TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_recheck_at(p_state TEXT) RETURNS TIMESTAMPTZ
LANGUAGE sql IMMUTABLE AS $$
-- When omniq_recheck_waiting last ran, from its state '<epoch seconds> <last id checked>'.
    SELECT to_timestamp(coalesce(nullif(split_part(p_state, ' ', 1), '')::float8, 0))
$$;

CREATE OR REPLACE FUNCTION omniq_recheck_waiting(p_every INTERVAL DEFAULT '10 seconds',
    p_batch INTEGER DEFAULT 200)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- The safety net for dependencies: resolve waiting tasks whose dependencies all completed, or
-- one of which failed, expired, was cancelled or is gone, which the commit-time resolution leaves none of unless a bug or a manual change
-- did. Bounded: at most p_batch waiting tasks per call, in id order from where the last call
-- stopped (omniq_meta 'waiting_recheck'), at most once per p_every across all callers (the
-- row is taken SKIP LOCKED: a concurrent caller does nothing). Returns the tasks resolved.
-- Index: tasks_waiting_ids_idx, tasks_pkey.
DECLARE
    v_state TEXT;
    v_ids TEXT[];
    v_stuck TEXT[];
BEGIN
    -- Read first, lock only when due: most calls change nothing and write nothing.
    SELECT m.value INTO v_state FROM omniq_meta AS m WHERE m.key = 'waiting_recheck';
    IF NOT FOUND THEN  -- the first call of this installation
        INSERT INTO omniq_meta (key, value) VALUES ('waiting_recheck', '')
        ON CONFLICT (key) DO NOTHING;
        v_state := '';
    END IF;
    IF omniq_recheck_at(v_state) > now() - p_every THEN
        RETURN 0;
    END IF;
    SELECT m.value INTO v_state FROM omniq_meta AS m WHERE m.key = 'waiting_recheck'
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR omniq_recheck_at(v_state) > now() - p_every THEN
        RETURN 0;
    END IF;
    SELECT array_agg(w.id ORDER BY w.id) INTO v_ids
    FROM (SELECT t.id FROM "tasks" AS t
          WHERE t.status = 'waiting' AND t.id > substr(v_state, strpos(v_state, ' ') + 1)
          ORDER BY t.id LIMIT p_batch) AS w;
    SELECT array_agg(w.id) INTO v_stuck
    FROM "tasks" AS w CROSS JOIN LATERAL omniq_dependencies_state(w.dependencies) AS s
    WHERE w.id = ANY (v_ids) AND w.status = 'waiting' AND (s.ready OR s.dead IS NOT NULL);
    IF v_stuck IS NOT NULL THEN
        PERFORM omniq_resolve_waiting(v_stuck, true);
    END IF;
    UPDATE omniq_meta SET value = extract(epoch FROM now()) || ' '
        || CASE WHEN cardinality(v_ids) = p_batch THEN v_ids[p_batch] ELSE '' END
    WHERE key = 'waiting_recheck';
    RETURN coalesce(cardinality(v_stuck), 0);
END
$$;
