-- Task life cycle in PL/pgSQL: enqueue, dequeue, finish (success, retry, failure), cancel,
-- expire, dependencies. Every state change of a task goes through one of these functions,
-- which write the matching results and events rows in the same transaction.
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_tasks#
CREATE OR REPLACE FUNCTION omniq_enqueue(p_tasks JSONB)
RETURNS TABLE (id TEXT, status TEXT)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Insert a JSON array of tasks (keys = tasks columns; omitted keys take the defaults).
-- Tasks with dependencies start 'waiting'; returned are the tasks whose status is not
-- 'pending' after enqueue (waiting, or cancelled because a dependency already failed).
-- SECURITY DEFINER: runs with its owner's rights, so a producer role needs EXECUTE on this
-- function and no write privilege on any table (sql/roles.sql). EXECUTE is revoked from
-- PUBLIC below; the search_path is pinned, pg_temp last.
DECLARE
    v_waiting TEXT[];
BEGIN
    WITH new_rows AS (
        INSERT INTO "tasks" AS t (id, queue_name, priority, status, func, args, kwargs,
            created_at, run_at, expires_at, retry_count, max_retries, retry_delay,
            dependencies, callbacks, metadata, task_data)
        SELECT coalesce(r.id, gen_random_uuid()::text), coalesce(r.queue_name, 'default'),
               coalesce(r.priority, 0),
               CASE WHEN jsonb_array_length(coalesce(r.dependencies, '[]')) > 0
                    THEN 'waiting' ELSE 'pending' END,
               r.func, coalesce(r.args, '[]'), coalesce(r.kwargs, '{}'),
               coalesce(r.created_at, now()), r.run_at, r.expires_at,
               coalesce(r.retry_count, 0), coalesce(r.max_retries, 3), coalesce(r.retry_delay, 1.0),
               coalesce(r.dependencies, '[]'), coalesce(r.callbacks, '{}'),
               coalesce(r.metadata, '{}'), coalesce(r.task_data, '{}')
        FROM jsonb_populate_recordset(NULL::"tasks", p_tasks) AS r
        RETURNING t.id, t.status, t.queue_name
    ), logged AS (
        INSERT INTO "events" (task_id, event_type, timestamp, queue_name)
        SELECT n.id, 'enqueued', clock_timestamp(), n.queue_name
        FROM new_rows AS n
    )
    SELECT array_agg(n.id) FILTER (WHERE n.status = 'waiting') INTO v_waiting FROM new_rows AS n;

    IF v_waiting IS NOT NULL THEN
        PERFORM omniq_resolve_waiting(v_waiting, true);
        RETURN QUERY SELECT t.id, t.status FROM "tasks" AS t WHERE t.id = ANY (v_waiting);
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_enqueue(JSONB) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_dequeue(p_queues TEXT[], p_limit INTEGER, p_worker_id TEXT)
RETURNS SETOF "tasks"
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Hand out up to p_limit ready tasks, marked running, from the queues in the given order
-- (the first queue is drained first); within a queue by priority DESC, created_at ASC.
-- SKIP LOCKED: concurrent callers never receive the same task. Index: tasks_dequeue_idx.
-- started_at is clock_timestamp(), not now(): a row committed while this call waited on a
-- lock would otherwise look as if it started before it was enqueued.
DECLARE
    v_queue TEXT;
    v_got INTEGER := 0;
    v_n INTEGER;
BEGIN
    PERFORM omniq_expire_tasks(p_queues);
    FOREACH v_queue IN ARRAY p_queues LOOP
        RETURN QUERY
        WITH picked AS (
            SELECT t.id FROM "tasks" AS t
            WHERE t.status = 'pending' AND t.queue_name = v_queue
              AND (t.run_at IS NULL OR t.run_at <= now())
              AND (t.expires_at IS NULL OR t.expires_at > now())
            ORDER BY t.priority DESC, t.created_at ASC
            LIMIT p_limit - v_got
            FOR UPDATE SKIP LOCKED
        ), taken AS (
            UPDATE "tasks" AS t
            SET status = 'running', started_at = clock_timestamp(), finished_at = NULL,
                worker_id = p_worker_id, attempts = t.attempts + 1
            FROM picked WHERE t.id = picked.id
            RETURNING t.*
        ), logged AS (
            INSERT INTO "events" (task_id, event_type, timestamp, queue_name, worker_id)
            SELECT k.id, 'dequeued', k.started_at, k.queue_name, p_worker_id
            FROM taken AS k
        )
        SELECT * FROM taken;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_got := v_got + v_n;
        EXIT WHEN v_got >= p_limit;
    END LOOP;
    IF v_got > 0 AND p_worker_id IS NOT NULL THEN
        -- Holding tasks counts as a heartbeat: a worker that was idle is not taken for dead.
        INSERT INTO omniq_workers (id, queues) VALUES (p_worker_id, p_queues)
        ON CONFLICT ON CONSTRAINT omniq_workers_pkey DO UPDATE SET last_heartbeat = now();
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION omniq_retry_delay(p_retry_delay REAL, p_retry_count INTEGER)
RETURNS INTERVAL
LANGUAGE sql VOLATILE AS $$
-- Exponential backoff with jitter: retry_delay * 2^retry_count * a random factor in
-- [0.75, 1.25), capped at one hour. retry_count is the number of retries already made.
    SELECT make_interval(secs => least(3600.0,
        p_retry_delay * power(2, least(p_retry_count, 30)) * (0.75 + 0.5 * random())))
$$;

CREATE OR REPLACE FUNCTION omniq_finish_tasks(p_outcomes JSONB, p_worker_id TEXT)
RETURNS TABLE (id TEXT, status TEXT)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Record a batch of runs in one transaction. p_outcomes is a JSON array of
-- {id, attempt, outcome: success|failure|expired, result, error, error_type, traceback,
--  started_at, finished_at, execution_time}. Only tasks still running in that attempt are
-- touched (a rescued task's late outcome is ignored); they are absent from the result.
-- A failure with retries left goes back to pending after omniq_retry_delay(); otherwise the
-- result row is written, callbacks are enqueued as tasks and dependents are resolved.
DECLARE
    v_ids TEXT[];
    v_statuses TEXT[];
    v_finished TEXT[];
    v_callbacks JSONB;
BEGIN
    WITH o AS (
        SELECT * FROM jsonb_to_recordset(p_outcomes) AS x(id TEXT, attempt INTEGER, outcome TEXT,
            result JSONB, error TEXT, error_type TEXT, traceback TEXT, started_at TIMESTAMPTZ,
            finished_at TIMESTAMPTZ, execution_time REAL)
    ), upd AS (
        UPDATE "tasks" AS t
        SET status = CASE
                WHEN o.outcome = 'success' THEN 'completed'
                WHEN o.outcome = 'expired' THEN 'expired'
                WHEN t.retry_count < t.max_retries THEN 'pending'
                ELSE 'failed' END,
            retry_count = t.retry_count + (o.outcome = 'failure' AND t.retry_count < t.max_retries)::int,
            run_at = CASE WHEN o.outcome = 'failure' AND t.retry_count < t.max_retries
                          THEN now() + omniq_retry_delay(t.retry_delay, t.retry_count) ELSE t.run_at END,
            finished_at = CASE WHEN o.outcome = 'failure' AND t.retry_count < t.max_retries
                               THEN NULL ELSE coalesce(o.finished_at, now()) END,
            started_at = coalesce(o.started_at, t.started_at)
        FROM o
        WHERE t.id = o.id AND t.attempts = o.attempt AND t.status = 'running'
        RETURNING t.id, t.status, t.queue_name, t.callbacks, t.task_data, t.run_at, t.retry_count,
                  t.started_at, o.outcome, o.result, o.error, o.error_type, o.traceback,
                  o.finished_at, o.execution_time
    ), results_written AS (
        INSERT INTO "results" AS r (task_id, status, result, error, error_type, traceback,
            created_at, started_at, completed_at, expires_at, worker_id, execution_time, result_data)
        SELECT u.id, CASE u.status WHEN 'completed' THEN 'success' WHEN 'failed' THEN 'failure'
                                   ELSE u.status END,
               u.result, u.error, u.error_type, u.traceback, now(), u.started_at,
               coalesce(u.finished_at, now()),
               coalesce(u.finished_at, now())
                   + make_interval(secs => (u.task_data ->> 'result_ttl')::float8),
               p_worker_id, u.execution_time, '{}'
        FROM upd AS u WHERE u.status <> 'pending'
        ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, result = excluded.result,
            error = excluded.error, error_type = excluded.error_type,
            traceback = excluded.traceback, started_at = excluded.started_at,
            completed_at = excluded.completed_at, expires_at = excluded.expires_at,
            worker_id = excluded.worker_id, execution_time = excluded.execution_time
    ), logged AS (
        INSERT INTO "events" (task_id, event_type, timestamp, queue_name, worker_id,
            message, error_type, error_message, traceback, execution_time)
        SELECT u.id, e.event_type, e.at, u.queue_name, p_worker_id, e.message,
               e.error_type, e.error, e.traceback, e.execution_time
        FROM upd AS u
        CROSS JOIN LATERAL (VALUES
            ('executing', coalesce(u.started_at, now()), NULL::text, NULL::real,
             NULL::text, NULL::text, NULL::text),
            (CASE u.status WHEN 'pending' THEN 'retry' ELSE u.status END,
             coalesce(u.finished_at, now()),
             CASE WHEN u.status = 'pending' THEN 'retry ' || u.retry_count || ' at ' || u.run_at END,
             u.execution_time, u.error_type, u.error, u.traceback)
        ) AS e(event_type, at, message, execution_time, error_type, error, traceback)
        WHERE u.outcome <> 'expired' OR e.event_type <> 'executing'
    )
    SELECT array_agg(u.id), array_agg(u.status),
           array_agg(u.id) FILTER (WHERE u.status <> 'pending'),
           (SELECT jsonb_agg(jsonb_build_object(
                'func', c.value, 'queue_name', f.queue_name,
                'args', jsonb_build_array(jsonb_build_object('task_id', f.id,
                    'status', CASE f.status WHEN 'completed' THEN 'success'
                                            WHEN 'failed' THEN 'failure' ELSE f.status END,
                    'result', f.result, 'error', f.error, 'error_type', f.error_type)),
                'metadata', jsonb_build_object('callback_of', f.id, 'callback', c.key)))
            FROM upd AS f CROSS JOIN LATERAL jsonb_each_text(f.callbacks) AS c
            WHERE (c.key = 'on_complete' AND f.status <> 'pending')
               OR (c.key = 'on_success' AND f.status = 'completed')
               OR (c.key = 'on_failure' AND f.status IN ('failed', 'expired')))
    INTO v_ids, v_statuses, v_finished, v_callbacks
    FROM upd AS u;

    IF v_callbacks IS NOT NULL THEN
        PERFORM omniq_enqueue(v_callbacks);
    END IF;
    IF v_finished IS NOT NULL THEN
        PERFORM omniq_resolve_dependents(v_finished);
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_ids, v_statuses);
END
$$;

CREATE OR REPLACE FUNCTION omniq_release_tasks(p_ids TEXT[], p_worker_id TEXT, p_reason TEXT)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Give running tasks back to the queue unchanged (graceful shutdown): no retry is counted.
DECLARE
    v_n INTEGER;
BEGIN
    WITH released AS (
        UPDATE "tasks" AS t
        SET status = 'pending', worker_id = NULL, started_at = NULL
        WHERE t.id = ANY (p_ids) AND t.status = 'running'
          AND t.worker_id IS NOT DISTINCT FROM p_worker_id
        RETURNING t.id, t.queue_name
    ), logged AS (
        INSERT INTO "events" (task_id, event_type, timestamp, queue_name, worker_id, message)
        SELECT r.id, 'requeued', now(), r.queue_name, p_worker_id, p_reason
        FROM released AS r
    )
    SELECT count(*) INTO v_n FROM released;
    RETURN v_n;
END
$$;

CREATE OR REPLACE FUNCTION omniq_cancel_tasks(p_ids TEXT[], p_reason TEXT)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Cancel tasks that have not started (pending or waiting); running and finished tasks are
-- left alone. Writes a 'cancelled' result and event, then cancels tasks depending on them.
DECLARE
    v_ids TEXT[];
BEGIN
    WITH cancelled AS (
        UPDATE "tasks" AS t SET status = 'cancelled', finished_at = now()
        WHERE t.id = ANY (p_ids) AND t.status IN ('pending', 'waiting')
        RETURNING t.id, t.queue_name
    ), results_written AS (
        INSERT INTO "results" (task_id, status, error, error_type, created_at, completed_at, result_data)
        SELECT c.id, 'cancelled', p_reason, 'TaskCancelled', now(), now(), '{}' FROM cancelled AS c
        ON CONFLICT (task_id) DO UPDATE SET status = 'cancelled', error = excluded.error,
            error_type = excluded.error_type, completed_at = excluded.completed_at
    ), logged AS (
        INSERT INTO "events" (task_id, event_type, timestamp, queue_name, message)
        SELECT c.id, 'cancelled', now(), c.queue_name, p_reason
        FROM cancelled AS c
    )
    SELECT array_agg(c.id) INTO v_ids FROM cancelled AS c;
    IF v_ids IS NOT NULL THEN
        PERFORM omniq_resolve_dependents(v_ids);
    END IF;
    RETURN coalesce(cardinality(v_ids), 0);
END
$$;

CREATE OR REPLACE FUNCTION omniq_expire_tasks(p_queues TEXT[] DEFAULT NULL)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Mark unstarted tasks past expires_at as expired (result + event), in the given queues or
-- all. Called by omniq_dequeue, so an expired task is never handed out. Index: tasks_expiry_idx.
DECLARE
    v_ids TEXT[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM "tasks" AS t
                   WHERE t.status IN ('pending', 'waiting') AND t.expires_at <= now()
                     AND (p_queues IS NULL OR t.queue_name = ANY (p_queues))) THEN
        RETURN 0;  -- the usual case, answered by the index alone
    END IF;
    WITH expired AS (
        UPDATE "tasks" AS t SET status = 'expired', finished_at = now()
        WHERE t.status IN ('pending', 'waiting') AND t.expires_at <= now()
          AND (p_queues IS NULL OR t.queue_name = ANY (p_queues))
        RETURNING t.id, t.queue_name, t.expires_at
    ), results_written AS (
        INSERT INTO "results" (task_id, status, error, error_type, created_at, completed_at, result_data)
        SELECT x.id, 'expired', 'task expired at ' || x.expires_at || ' before it ran',
               'TaskExpired', now(), now(), '{}'
        FROM expired AS x
        ON CONFLICT (task_id) DO UPDATE SET status = 'expired', error = excluded.error,
            error_type = excluded.error_type, completed_at = excluded.completed_at
    ), logged AS (
        INSERT INTO "events" (task_id, event_type, timestamp, queue_name, message)
        SELECT x.id, 'expired', now(), x.queue_name, 'expired before it ran'
        FROM expired AS x
    )
    SELECT array_agg(x.id) INTO v_ids FROM expired AS x;
    IF v_ids IS NOT NULL THEN
        PERFORM omniq_resolve_dependents(v_ids);
    END IF;
    RETURN coalesce(cardinality(v_ids), 0);
END
$$;

CREATE OR REPLACE FUNCTION omniq_resolve_dependents(p_finished TEXT[])
RETURNS VOID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Re-examine the waiting tasks that name any of p_finished. Index: tasks_waiting_ids_idx
-- (is any task waiting at all?), then tasks_waiting_idx (which ones name these).
DECLARE
    v_ids TEXT[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM "tasks" AS t WHERE t.status = 'waiting') THEN
        RETURN;  -- the usual case: nothing waits for anything
    END IF;
    SELECT array_agg(t.id) INTO v_ids FROM "tasks" AS t
    WHERE t.status = 'waiting' AND t.dependencies ?| p_finished;
    IF v_ids IS NOT NULL THEN
        PERFORM omniq_resolve_waiting(v_ids, false);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION omniq_resolve_waiting(p_ids TEXT[], p_strict BOOLEAN)
RETURNS VOID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Waiting tasks whose dependencies all completed become pending; those with a dependency
-- that failed, expired or was cancelled are cancelled. With p_strict, a dependency naming
-- no task raises foreign_key_violation (used at enqueue).
DECLARE
    v_bad RECORD;
    v_ready TEXT[];
    v_dead TEXT[];
BEGIN
    -- Lock first, in id order, in a statement of its own: the classification below then
    -- reads with a fresh snapshot, so two dependencies finishing at once cannot both miss.
    PERFORM 1 FROM "tasks" AS t WHERE t.id = ANY (p_ids) AND t.status = 'waiting'
    ORDER BY t.id FOR UPDATE;

    IF p_strict THEN
        SELECT w.id, d.dep INTO v_bad
        FROM "tasks" AS w CROSS JOIN jsonb_array_elements_text(w.dependencies) AS d(dep)
        WHERE w.id = ANY (p_ids) AND NOT EXISTS (SELECT 1 FROM "tasks" AS x WHERE x.id = d.dep)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'task % depends on unknown task %', v_bad.id, v_bad.dep
                USING ERRCODE = 'foreign_key_violation',
                      HINT = 'Enqueue the dependency first, or in the same enqueue_many call.';
        END IF;
    END IF;

    SELECT array_agg(s.id) FILTER (WHERE s.all_done), array_agg(s.id) FILTER (WHERE s.any_dead)
    INTO v_ready, v_dead
    FROM (
        SELECT w.id,
               bool_and(coalesce(x.status = 'completed', false)) AS all_done,
               bool_or(coalesce(x.status IN ('failed', 'cancelled', 'expired'), false)) AS any_dead
        FROM "tasks" AS w
        CROSS JOIN jsonb_array_elements_text(w.dependencies) AS d(dep)
        LEFT JOIN "tasks" AS x ON x.id = d.dep
        WHERE w.id = ANY (p_ids) AND w.status = 'waiting'
        GROUP BY w.id
    ) AS s;

    IF v_ready IS NOT NULL THEN
        UPDATE "tasks" AS t SET status = 'pending' WHERE t.id = ANY (v_ready);
    END IF;
    IF v_dead IS NOT NULL THEN
        PERFORM omniq_cancel_tasks(v_dead, 'a dependency failed, expired or was cancelled');
    END IF;
END
$$;
