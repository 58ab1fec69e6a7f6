-- Schedule advancement in PL/pgSQL. A scheduler, in one transaction, claims due schedules
-- (omniq_claim_schedules_v1, SKIP LOCKED) with the database's clock (now()), computes each one's
-- following fire time from that clock (croniter, in Python) and calls omniq_fire_schedules_v1,
-- which enqueues the tasks and advances the rows. Each schedule fires in a subtransaction of
-- its own: one that cannot fire is paused with its error, and the others fire.
-- Pause, resume and cancel are here too, for Python and psql alike.
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_schedules#
CREATE OR REPLACE FUNCTION omniq_claim_schedules_v1(p_limit INTEGER)
RETURNS TABLE (id TEXT, schedule_type TEXT, func TEXT, args JSONB, kwargs JSONB,
    queue_name TEXT, cron_expression TEXT, interval_seconds REAL, "timestamp" TIMESTAMPTZ,
    status TEXT, created_at TIMESTAMPTZ, last_run TIMESTAMPTZ, next_run TIMESTAMPTZ,
    max_runs INTEGER, run_count INTEGER, ttl_seconds REAL, expires_at TIMESTAMPTZ,
    metadata JSONB, schedule_data JSONB)
LANGUAGE sql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Lock up to p_limit due active schedules for this transaction; concurrent schedulers skip
-- them, so each due time fires once. Due means next_run <= now(), the transaction's start:
-- the caller computes the following times from that same now(). Index: schedules_due_idx.
    SELECT s.id, s.schedule_type, s.func, s.args, s.kwargs, s.queue_name, s.cron_expression,
           s.interval_seconds, s.timestamp, s.status, s.created_at, s.last_run, s.next_run,
           s.max_runs, s.run_count, s.ttl_seconds, s.expires_at, s.metadata, s.schedule_data
    FROM "schedules" AS s
    WHERE s.status = 'active' AND s.next_run <= now()
    ORDER BY s.next_run
    LIMIT p_limit
    FOR UPDATE OF s SKIP LOCKED
$$;
REVOKE EXECUTE ON FUNCTION omniq_claim_schedules_v1(INTEGER) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_fire_schedules_v1(p_ids TEXT[], p_next_runs TIMESTAMPTZ[],
    p_errors TEXT[] DEFAULT NULL)
RETURNS TABLE (schedule_id TEXT, task_id TEXT, error TEXT)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- For each claimed schedule, p_next_runs[i] is its following fire time (NULL when none) and
-- p_errors[i] (optional) what kept the caller from computing it. Each schedule, in a
-- subtransaction of its own: expire it if past expires_at (or created_at + ttl_seconds), else
-- enqueue its task with the reserved id '<schedule id>@<due time in UTC>' (a due time that
-- fired already is not enqueued again), log a 'scheduled' event, record last_run and
-- run_count, set next_run, and complete it after max_runs or its last time. A schedule that
-- cannot fire (an error from the caller, a following time not later than the due time, a
-- row that makes an invalid task) is paused with the error in schedule_data.last_error and a
-- WARNING, and the others fire; transient errors (deadlock, serialization, lock timeout)
-- abort the batch, to be retried. One row per schedule: the id of the task enqueued, the
-- error when it was paused, neither when it expired or its due time had fired already.
-- Index: schedules_pkey, tasks_pkey.
#variable_conflict use_column
DECLARE
    s RECORD;
    v_expiry TIMESTAMPTZ;
    v_task TEXT;
    v_inserted INTEGER;
    v_error TEXT;
BEGIN
    FOR s IN
        SELECT sc.*, n.following, n.problem FROM "schedules" AS sc
        JOIN unnest(p_ids, p_next_runs,
                    coalesce(p_errors, array_fill(NULL::text, ARRAY[cardinality(p_ids)])))
             AS n(id, following, problem) ON sc.id = n.id
        WHERE sc.status = 'active' AND sc.next_run <= now()
        ORDER BY sc.next_run
        FOR UPDATE OF sc
    LOOP
        v_task := NULL;
        v_error := NULL;
        BEGIN
            IF s.problem IS NOT NULL THEN
                RAISE EXCEPTION '%', s.problem USING ERRCODE = 'data_exception';
            END IF;
            v_expiry := coalesce(s.expires_at, s.created_at + make_interval(secs => s.ttl_seconds));
            IF v_expiry IS NOT NULL AND v_expiry <= now() THEN
                UPDATE "schedules" AS sc SET status = 'expired' WHERE sc.id = s.id;
            ELSE
                IF s.following IS NOT NULL AND s.following <= s.next_run THEN
                    RAISE EXCEPTION 'following fire time % is not later than the due time %',
                        s.following, s.next_run USING ERRCODE = 'invalid_parameter_value';
                END IF;
                v_task := s.id || '@'
                    || to_char(s.next_run AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
                SELECT i.inserted INTO v_inserted FROM omniq_insert_tasks(jsonb_build_array(
                    jsonb_build_object(
                        'id', v_task, 'func', s.func, 'args', s.args, 'kwargs', s.kwargs,
                        'queue_name', s.queue_name,
                        'priority', s.schedule_data -> 'priority',
                        'max_retries', s.schedule_data -> 'max_retries',
                        'retry_delay', s.schedule_data -> 'retry_delay',
                        'metadata', jsonb_build_object('schedule_id', s.id, 'due', s.next_run),
                        'task_data', jsonb_strip_nulls(jsonb_build_object(
                            'timeout', s.schedule_data -> 'timeout')))), true) AS i;
                IF v_inserted > 0 THEN
                    INSERT INTO "events" (task_id, event_type, timestamp, queue_name, schedule_id, message)
                    VALUES (v_task, 'scheduled', now(), s.queue_name, s.id, 'fired for ' || s.next_run);
                ELSE
                    v_task := NULL;  -- this due time fired already: nothing enqueued now
                END IF;
                UPDATE "schedules" AS sc
                SET last_run = now(), run_count = sc.run_count + 1, next_run = s.following,
                    status = CASE
                        WHEN s.following IS NULL THEN 'completed'
                        WHEN s.max_runs IS NOT NULL AND s.run_count + 1 >= s.max_runs THEN 'completed'
                        WHEN v_expiry IS NOT NULL AND s.following >= v_expiry THEN 'expired'
                        ELSE 'active' END
                WHERE sc.id = s.id;
            END IF;
        EXCEPTION
            WHEN transaction_rollback OR lock_not_available THEN
                RAISE;
            WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT;
                v_task := NULL;
                UPDATE "schedules" AS sc
                SET status = 'paused',
                    schedule_data = sc.schedule_data || jsonb_build_object(
                        'last_error', v_error, 'last_error_at', now())
                WHERE sc.id = s.id;
                RAISE WARNING 'omniq: schedule % could not fire and was paused: %', s.id, v_error
                    USING HINT = 'Fix it, then resume it (omniq schedule resume, omniq_resume_schedule).';
        END;
        schedule_id := s.id;
        task_id := v_task;
        error := v_error;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_fire_schedules_v1(TEXT[], TIMESTAMPTZ[], TEXT[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_set_schedule_status_v1(p_id TEXT, p_status TEXT)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Pause ('paused'), resume ('active') or cancel ('cancelled') a schedule. Only active and
-- paused schedules change; a resumed schedule whose next_run passed fires once, at once, and
-- forgets the error it was paused for (schedule_data.last_error).
-- Returns false when no such schedule could change.
BEGIN
    IF p_status NOT IN ('active', 'paused', 'cancelled') THEN
        RAISE EXCEPTION 'cannot set schedule % to %', p_id, p_status
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use active (resume), paused or cancelled.';
    END IF;
    UPDATE "schedules"
    SET status = p_status,
        schedule_data = CASE WHEN p_status = 'active'
                             THEN schedule_data - 'last_error' - 'last_error_at'
                             ELSE schedule_data END
    WHERE id = p_id AND status IN ('active', 'paused');
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION omniq_pause_schedule(p_id TEXT) RETURNS BOOLEAN
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_set_schedule_status_v1(p_id, 'paused') $$;

CREATE OR REPLACE FUNCTION omniq_resume_schedule(p_id TEXT) RETURNS BOOLEAN
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_set_schedule_status_v1(p_id, 'active') $$;

CREATE OR REPLACE FUNCTION omniq_cancel_schedule(p_id TEXT) RETURNS BOOLEAN
LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT omniq_set_schedule_status_v1(p_id, 'cancelled') $$;
