-- Aborting tasks (issue 13, part 4): omniq_abort_task asks a running task to stop, and cancels
-- one that has not started. A running task's request is recorded on its row (migration 0012)
-- and its worker is told at once by a NOTIFY on the 'aborts' channel; from then on the task can
-- only end 'cancelled', through omniq_end_tasks like every other end. Which paths honour the
-- request: omniq_end_tasks (any outcome the worker reports), omniq_finish_tasks_v1 (no retry),
-- omniq_rescue_tasks (no retry after the worker died), omniq_release_tasks_v1 and
-- omniq_requeue_stalled (no return to pending): see sql/README.md, "Aborting a running task".
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_abort#
CREATE OR REPLACE FUNCTION omniq_abort_text(p_by TEXT, p_reason TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
-- The error and final event text of an aborted task: who asked, and why when they said.
    SELECT 'aborted by ' || coalesce(p_by, 'an unknown caller')
           || coalesce(': ' || nullif(p_reason, ''), '')
$$;

CREATE OR REPLACE FUNCTION omniq_abort_task_v1(p_id TEXT, p_reason TEXT, p_by TEXT)
RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Abort one task. Not started (pending, delayed or not, or waiting): cancelled at once through
-- omniq_cancel_tasks, its dependents with it. Running: the request is recorded (the first
-- one's time, caller and reason are kept; asking again only sends the NOTIFY again; no event
-- is written now, since releases before 0012 cannot read a new event type) and its
-- worker is notified on omniq_channel('aborts') with '<worker id> <attempt> <task id>' (ids
-- hold no spaces); the task ends 'cancelled' once its worker stops it. True in both cases;
-- false, changing nothing, for a finished task or an unknown id. p_by says who asks (NULL:
-- the database user). Races: the row is locked first, so a finish committed before wins (the
-- task is finished: false), and a finish waiting behind this call sees the request and ends
-- the task 'cancelled'. Index: tasks_pkey.
DECLARE
    v_by CONSTANT TEXT := coalesce(nullif(p_by, ''), session_user::text);
    v_task RECORD;
BEGIN
    LOOP
        IF omniq_cancel_tasks(ARRAY[p_id], omniq_abort_text(v_by, p_reason)) = 1 THEN
            RETURN true;
        END IF;
        SELECT t.status, t.worker_id, t.attempts, t.abort_requested_at INTO v_task
        FROM "tasks" AS t WHERE t.id = p_id FOR NO KEY UPDATE;
        IF NOT FOUND OR v_task.status IN ('completed', 'failed', 'cancelled', 'expired') THEN
            RETURN false;
        END IF;
        IF v_task.status = 'running' THEN
            IF v_task.abort_requested_at IS NULL THEN
                UPDATE "tasks" AS t
                SET abort_requested_at = now(), abort_requested_by = v_by, abort_reason = p_reason
                WHERE t.id = p_id;
            END IF;
            PERFORM pg_notify(omniq_channel('aborts'),
                coalesce(v_task.worker_id, '') || ' ' || v_task.attempts || ' ' || p_id);
            RETURN true;
        END IF;
        -- pending or waiting again (requeued between the two looks), now locked: cancel it
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_abort_task_v1(TEXT, TEXT, TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_abort_task(p_id TEXT, p_reason TEXT DEFAULT NULL)
RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- The psql API's name: SELECT omniq_abort_task('task id', 'why'). The request is recorded as
-- made by the database user. See omniq_abort_task_v1. SECURITY DEFINER, not PUBLIC.
BEGIN
    RETURN omniq_abort_task_v1(p_id, p_reason, NULL);
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_abort_task(TEXT, TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_end_aborted(p_ids TEXT[], p_worker_id TEXT, p_why TEXT)
RETURNS TEXT[]
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Of p_ids, end the running tasks with an abort request 'cancelled' (omniq_end_tasks writes the
-- abort's error), instead of the return to pending a caller was about to make (release at
-- shutdown, requeue of stalled tasks): a task asked to stop never runs again. p_why becomes
-- the final event's detail. Returns the ids ended. Index: tasks_pkey.
DECLARE
    v_ends JSONB;
    v_ended TEXT[];
BEGIN
    SELECT jsonb_agg(jsonb_build_object('id', l.id, 'status', 'cancelled', 'message', p_why))
    INTO v_ends
    FROM (SELECT t.id FROM "tasks" AS t
          WHERE t.id = ANY (p_ids) AND t.status = 'running' AND t.abort_requested_at IS NOT NULL
          ORDER BY t.id FOR NO KEY UPDATE) AS l;
    IF v_ends IS NOT NULL THEN
        SELECT array_agg(e.id) INTO v_ended FROM omniq_end_tasks(v_ends, '{running}', p_worker_id) AS e;
    END IF;
    RETURN coalesce(v_ended, '{}');
END
$$;
