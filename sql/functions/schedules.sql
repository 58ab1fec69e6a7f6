-- Schedule advancement in PL/pgSQL. A scheduler, in one transaction, claims due schedules
-- (omniq_claim_schedules, SKIP LOCKED), computes each one's following fire time (croniter,
-- in Python) and calls omniq_fire_schedules, which enqueues the tasks and advances the rows.
-- Pause, resume and cancel are here too, for Python and psql alike.
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_schedules#
CREATE OR REPLACE FUNCTION omniq_claim_schedules(p_limit INTEGER)
RETURNS SETOF "schedules"
LANGUAGE sql SET search_path FROM CURRENT AS $$
-- Lock up to p_limit due active schedules for this transaction; concurrent schedulers skip
-- them, so each due time fires once. Index: schedules_due_idx.
    SELECT * FROM "schedules"
    WHERE status = 'active' AND next_run <= now()
    ORDER BY next_run
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
$$;

CREATE OR REPLACE FUNCTION omniq_fire_schedules(p_ids TEXT[], p_next_runs TIMESTAMPTZ[])
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- For each claimed schedule (p_next_runs[i] is its following fire time, NULL when none):
-- expire it if past expires_at (or created_at + ttl_seconds), else enqueue its task with the
-- id '<schedule id>@<due time>', log a 'scheduled' event, record last_run and run_count, set
-- next_run, and complete it after max_runs or its last time. Returns the tasks enqueued.
DECLARE
    s RECORD;
    v_expiry TIMESTAMPTZ;
    v_task_id TEXT;
    v_fired INTEGER := 0;
BEGIN
    FOR s IN
        SELECT sc.*, n.following FROM "schedules" AS sc
        JOIN unnest(p_ids, p_next_runs) AS n(id, following) ON sc.id = n.id
        WHERE sc.status = 'active' AND sc.next_run <= now()
        ORDER BY sc.next_run
        FOR UPDATE OF sc
    LOOP
        v_expiry := coalesce(s.expires_at, s.created_at + make_interval(secs => s.ttl_seconds));
        IF v_expiry IS NOT NULL AND v_expiry <= now() THEN
            UPDATE "schedules" SET status = 'expired' WHERE id = s.id;
            CONTINUE;
        END IF;
        v_task_id := s.id || '@' || to_char(s.next_run AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
        PERFORM omniq_enqueue(jsonb_build_array(jsonb_build_object(
            'id', v_task_id, 'func', s.func, 'args', s.args, 'kwargs', s.kwargs,
            'queue_name', s.queue_name,
            'priority', s.schedule_data -> 'priority',
            'max_retries', s.schedule_data -> 'max_retries',
            'retry_delay', s.schedule_data -> 'retry_delay',
            'metadata', jsonb_build_object('schedule_id', s.id, 'due', s.next_run),
            'task_data', jsonb_strip_nulls(jsonb_build_object('timeout', s.schedule_data -> 'timeout')))));
        INSERT INTO "events" (task_id, event_type, timestamp, queue_name, schedule_id, message)
        VALUES (v_task_id, 'scheduled', now(), s.queue_name, s.id,
                'fired for ' || s.next_run);
        UPDATE "schedules"
        SET last_run = now(), run_count = run_count + 1, next_run = s.following,
            status = CASE
                WHEN s.following IS NULL THEN 'completed'
                WHEN s.max_runs IS NOT NULL AND s.run_count + 1 >= s.max_runs THEN 'completed'
                WHEN v_expiry IS NOT NULL AND s.following >= v_expiry THEN 'expired'
                ELSE 'active' END
        WHERE id = s.id;
        v_fired := v_fired + 1;
    END LOOP;
    RETURN v_fired;
END
$$;

CREATE OR REPLACE FUNCTION omniq_set_schedule_status(p_id TEXT, p_status TEXT)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Pause ('paused'), resume ('active') or cancel ('cancelled') a schedule. Only active and
-- paused schedules change; a resumed schedule whose next_run passed fires once, at once.
-- Returns false when no such schedule could change.
BEGIN
    IF p_status NOT IN ('active', 'paused', 'cancelled') THEN
        RAISE EXCEPTION 'cannot set schedule % to %', p_id, p_status
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use active (resume), paused or cancelled.';
    END IF;
    UPDATE "schedules" SET status = p_status
    WHERE id = p_id AND status IN ('active', 'paused');
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION omniq_pause_schedule(p_id TEXT) RETURNS BOOLEAN
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_set_schedule_status(p_id, 'paused') $$;

CREATE OR REPLACE FUNCTION omniq_resume_schedule(p_id TEXT) RETURNS BOOLEAN
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_set_schedule_status(p_id, 'active') $$;

CREATE OR REPLACE FUNCTION omniq_cancel_schedule(p_id TEXT) RETURNS BOOLEAN
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_set_schedule_status(p_id, 'cancelled') $$;
