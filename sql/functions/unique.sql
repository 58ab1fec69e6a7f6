-- Unique tasks (issue 13, part 1): a task may carry a uniqueness key; while a task with the same
-- key is in one of the states that count, enqueueing another does not create a duplicate.
-- Enforced by the partial unique index tasks_unique_key_idx (migration 0011) over the rows in
-- one of their own counted states (tasks.unique_states): a second producer's row conflicts
-- with the first one's, waiting for it to commit, so no race makes two. The enqueue entry
-- points (omniq_enqueue_v1, omniq_enqueue_v2, omniq_add_task) send a batch holding unique
-- keys here; batches without one never come here. See sql/README.md, "Unique tasks".
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_unique#
CREATE OR REPLACE FUNCTION omniq_unique_document(p_doc JSONB) RETURNS JSONB
LANGUAGE plpgsql STABLE AS $$
-- One task document with a unique key, checked and completed: unique_key with its time window
-- folded in ('<key>#<window start, UTC>', same key within one window), unique_states (default
-- pending, waiting, running; any superset of those three, up to all seven states),
-- unique_mode (skip, replace or keep_run_at; default skip) and an id (generated if absent).
-- Raises invalid_parameter_value with a hint for anything else.
DECLARE
    v_key TEXT := p_doc ->> 'unique_key';
    v_states TEXT[];
    v_window DOUBLE PRECISION;
    v_mode TEXT := coalesce(p_doc ->> 'unique_mode', 'skip');
BEGIN
    IF jsonb_typeof(p_doc -> 'unique_key') IS DISTINCT FROM 'string' OR v_key = ''
       OR length(v_key) > 255 OR v_key ~ '[\x01-\x1f\x7f]' THEN
        RAISE EXCEPTION 'a unique key must be a string of 1-255 characters without control characters, got %',
            left(p_doc ->> 'unique_key', 300)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a shorter key, for example a hash of what makes the task unique.';
    END IF;
    IF jsonb_typeof(p_doc -> 'unique_states') = 'array' THEN
        SELECT array_agg(DISTINCT s.state ORDER BY s.state) INTO v_states
        FROM jsonb_array_elements_text(p_doc -> 'unique_states') AS s(state);
    ELSIF coalesce(jsonb_typeof(p_doc -> 'unique_states'), 'null') = 'null' THEN
        v_states := '{pending,running,waiting}';
    END IF;
    IF v_states IS NULL
       OR NOT v_states <@ '{pending,waiting,running,completed,failed,cancelled,expired}'::text[]
       OR NOT '{pending,waiting,running}'::text[] <@ v_states THEN
        RAISE EXCEPTION 'unique states must include pending, waiting and running, and may add completed, failed, cancelled or expired; got %',
            p_doc -> 'unique_states'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A task moves through pending, waiting and running; a key that stopped counting there could meet a second task.';
    END IF;
    IF v_mode NOT IN ('skip', 'replace', 'keep_run_at') THEN
        RAISE EXCEPTION 'unique mode must be skip, replace or keep_run_at, got %', quote_literal(v_mode)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(jsonb_typeof(p_doc -> 'unique_window'), 'null') <> 'null' THEN
        v_window := CASE WHEN jsonb_typeof(p_doc -> 'unique_window') = 'number'
                         THEN (p_doc ->> 'unique_window')::double precision END;
        IF v_window IS NULL OR NOT v_window BETWEEN 1 AND 315360000 THEN
            RAISE EXCEPTION 'a unique window must be a number of seconds from 1 to 315360000 (10 years), got %',
                p_doc -> 'unique_window' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_key := v_key || '#' || to_char(to_timestamp(floor(extract(epoch FROM now()) / v_window)
            * v_window) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
    END IF;
    RETURN p_doc || jsonb_build_object('unique_key', v_key, 'unique_states', v_states,
        'unique_mode', v_mode, 'id', coalesce(p_doc ->> 'id', omniq_new_id()));
END
$$;

CREATE OR REPLACE FUNCTION omniq_insert_unique_tasks(p_tasks JSONB,
    OUT inserted INTEGER, OUT waiting TEXT[], OUT duplicates JSONB)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Enqueue a batch holding unique keys (from a producer: omniq_insert_tasks does the inserting
-- and its checks). The tasks with a key go first, one at a time in batch order, each in a
-- subtransaction: inserted, then given its key, which tasks_unique_key_idx checks. When the
-- key is taken (by a committed task, by one committing meanwhile: the check waits for it, or
-- by an earlier task of this batch: the first wins), the insert is undone and the task holding
-- the key is the answer, changed as the mode says: skip leaves it; replace gives it the new
-- args, kwargs and run_at, keep_run_at the new args and kwargs, while it has not started
-- (pending or waiting). Then the tasks without a key, in one statement; a dependency on a
-- deduplicated task is redirected to the task that holds its key. duplicates: a JSON array of
-- {id: the id asked for, existing_id, status}. Index: tasks_unique_key_idx, tasks_pkey.
DECLARE
    v_doc JSONB;
    v_plain JSONB;
    v_map JSONB := '{}';
    v_one RECORD;
    v_held RECORD;
    v_constraint TEXT;
BEGIN
    inserted := 0;
    duplicates := '[]';
    FOR v_doc IN
        SELECT omniq_unique_document(e.doc) FROM jsonb_array_elements(p_tasks) WITH ORDINALITY AS e(doc, n)
        WHERE coalesce(jsonb_typeof(e.doc -> 'unique_key'), 'null') <> 'null' ORDER BY e.n
    LOOP
        v_doc := omniq_redirect_dependencies(v_doc, v_map);
        LOOP
            BEGIN
                SELECT i.inserted, i.waiting INTO v_one
                FROM omniq_insert_tasks(jsonb_build_array(v_doc - 'unique_key'), false) AS i;
                UPDATE "tasks" AS t
                SET unique_key = v_doc ->> 'unique_key',
                    unique_states = ARRAY(SELECT jsonb_array_elements_text(v_doc -> 'unique_states'))
                WHERE t.id = v_doc ->> 'id';
                inserted := inserted + v_one.inserted;
                waiting := waiting || v_one.waiting;
                EXIT;
            EXCEPTION WHEN unique_violation THEN
                GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
                IF v_constraint IS DISTINCT FROM 'tasks_unique_key_idx' THEN
                    RAISE;
                END IF;
            END;
            SELECT t.id, t.status, t.queue_name INTO v_held FROM "tasks" AS t
            WHERE t.unique_key = v_doc ->> 'unique_key' AND t.status = ANY (t.unique_states)
            FOR NO KEY UPDATE;
            CONTINUE WHEN NOT FOUND;  -- it left the counted states meanwhile: insert again
            IF v_doc ->> 'unique_mode' <> 'skip' AND v_held.status IN ('pending', 'waiting') THEN
                UPDATE "tasks" AS t
                SET args = coalesce(v_doc -> 'args', '[]'), kwargs = coalesce(v_doc -> 'kwargs', '{}'),
                    run_at = CASE WHEN v_doc ->> 'unique_mode' = 'replace'
                                  THEN (v_doc ->> 'run_at')::timestamptz ELSE t.run_at END,
                    delayed = t.status = 'pending' AND coalesce(
                        CASE WHEN v_doc ->> 'unique_mode' = 'replace'
                             THEN (v_doc ->> 'run_at')::timestamptz ELSE t.run_at END > now(), false)
                WHERE t.id = v_held.id;
                PERFORM pg_notify(omniq_channel('tasks'), v_held.queue_name);
            END IF;
            v_map := v_map || jsonb_build_object(v_doc ->> 'id', v_held.id);
            duplicates := duplicates || jsonb_build_object('id', v_doc ->> 'id',
                'existing_id', v_held.id, 'status', v_held.status);
            EXIT;
        END LOOP;
    END LOOP;
    SELECT jsonb_agg(omniq_redirect_dependencies(e.doc, v_map) ORDER BY e.n) INTO v_plain
    FROM jsonb_array_elements(p_tasks) WITH ORDINALITY AS e(doc, n)
    WHERE coalesce(jsonb_typeof(e.doc -> 'unique_key'), 'null') = 'null';
    IF v_plain IS NOT NULL THEN
        SELECT i.inserted, i.waiting INTO v_one FROM omniq_insert_tasks(v_plain, false) AS i;
        inserted := inserted + v_one.inserted;
        waiting := waiting || v_one.waiting;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION omniq_redirect_dependencies(p_doc JSONB, p_map JSONB) RETURNS JSONB
LANGUAGE sql IMMUTABLE AS $$
-- A task document whose dependencies name p_map's keys (ids of deduplicated tasks) with the
-- ids they map to (the tasks that hold their unique keys).
    SELECT CASE WHEN p_map = '{}' OR jsonb_typeof(p_doc -> 'dependencies') IS DISTINCT FROM 'array'
                THEN p_doc
                ELSE jsonb_set(p_doc, '{dependencies}', coalesce((
                    SELECT jsonb_agg(coalesce(p_map -> d.dep, to_jsonb(d.dep)) ORDER BY d.n)
                    FROM jsonb_array_elements_text(p_doc -> 'dependencies')
                         WITH ORDINALITY AS d(dep, n)), '[]')) END
$$;

CREATE OR REPLACE FUNCTION omniq_enqueue_v2(p_tasks JSONB)
RETURNS TABLE (id TEXT, status TEXT, existing_id TEXT)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- omniq_enqueue_v1, and what became of unique tasks: returned are the tasks not 'pending'
-- after enqueue (waiting, or cancelled because a dependency already failed), with a NULL
-- existing_id, and each task not created because another holds its unique key: the id asked
-- for, the holder's status, and the holder's id as existing_id. Nothing is stored when
-- anything is refused. Index: tasks_pkey, tasks_unique_key_idx.
-- SECURITY DEFINER: a producer role needs EXECUTE on this function only (sql/roles.sql).
DECLARE
    v_waiting TEXT[];
    v_duplicates JSONB;
BEGIN
    IF jsonb_path_exists(p_tasks, '$[*].unique_key ? (@ != null)') THEN
        SELECT i.waiting, i.duplicates INTO v_waiting, v_duplicates
        FROM omniq_insert_unique_tasks(p_tasks) AS i;
    ELSE
        SELECT i.waiting INTO v_waiting FROM omniq_insert_tasks(p_tasks, false) AS i;
    END IF;
    IF v_waiting IS NOT NULL THEN
        RETURN QUERY SELECT t.id, t.status, NULL::text FROM "tasks" AS t WHERE t.id = ANY (v_waiting);
    END IF;
    IF v_duplicates IS NOT NULL THEN
        RETURN QUERY SELECT d.id, d.status, d.existing_id
        FROM jsonb_to_recordset(v_duplicates) AS d(id TEXT, status TEXT, existing_id TEXT);
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_enqueue_v2(JSONB) FROM PUBLIC;
