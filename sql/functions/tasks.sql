-- Task life cycle in PL/pgSQL: enqueue, dequeue, finish (success, retry, failure), cancel,
-- expire, dependencies, and omniq_end_tasks: the one routine that takes tasks to a final
-- state and does every consequence of it (result, final event, callbacks, dependents).
-- Every path that ends a task calls omniq_end_tasks; none writes a final status itself.
-- The entry points a role may call are SECURITY DEFINER with a pinned search_path (pg_temp
-- last) and not executable by PUBLIC; the helpers they call run with the same rights.
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_tasks#
CREATE OR REPLACE FUNCTION omniq_reserved_id(p_id TEXT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
-- The ids OmniQ gives its own tasks: a schedule's fires '<schedule id>@<due time in UTC>'
-- and callbacks '<task id>@on_success' (on_failure, on_complete). omniq_enqueue refuses them,
-- so no producer can take one first and make a fire or a callback collide with its task.
    SELECT p_id ~ '@(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z|on_success|on_failure|on_complete)$'
$$;

CREATE OR REPLACE FUNCTION omniq_valid_id(p_id TEXT, p_max INTEGER) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
-- A task (p_max 255) or schedule (200) id as the Python models accept it: 1 to p_max
-- characters, no space, comma or control character (tab, newline... are control characters;
-- the models also refuse Unicode spaces, which the database lets through: a task with one is
-- read as stored). Written without character classes: this runs for every task enqueued.
    SELECT p_id <> '' AND length(p_id) <= p_max AND p_id !~ '[ ,\x01-\x1f\x7f]'
$$;

CREATE OR REPLACE FUNCTION omniq_valid_queue_name(p_queue_name TEXT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
-- A queue name as the Python models accept it: at most 200 characters, not blank, no
-- control characters.
    SELECT length(p_queue_name) <= 200 AND btrim(p_queue_name, ' ') <> ''
           AND p_queue_name !~ '[\x01-\x1f\x7f]'
$$;

CREATE OR REPLACE FUNCTION omniq_callback_id(p_task_id TEXT, p_kind TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
-- The id of the callback task of kind p_kind (on_success, ...) of a task: one per task and
-- kind, so a callback is never enqueued twice. Ids longer than 240 characters are replaced
-- by their md5, so the callback id stays a valid task id (at most 255 characters).
    SELECT CASE WHEN length(p_task_id) <= 240 THEN p_task_id ELSE md5(p_task_id) END
           || '@' || p_kind
$$;

CREATE OR REPLACE FUNCTION omniq_after_deadlock(p_tries INTEGER) RETURNS INTEGER
LANGUAGE plpgsql AS $$
-- Called where a function caught a deadlock (its subtransaction rolled back, its locks let
-- go): wait a little, longer each time, and return the attempts so far; after 10, give up.
-- The entry points that lock tasks retry this way, so no deadlock reaches their caller.
BEGIN
    IF p_tries >= 9 THEN
        RAISE EXCEPTION 'deadlock detected 10 times in a row; giving up'
            USING ERRCODE = 'deadlock_detected';
    END IF;
    PERFORM pg_sleep(random() * 0.02 * (p_tries + 1));
    RETURN p_tries + 1;
END
$$;

CREATE OR REPLACE FUNCTION omniq_enqueue_v1(p_tasks JSONB)
RETURNS TABLE (id TEXT, status TEXT)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Insert a JSON array of tasks (keys = tasks columns; omitted keys take the defaults).
-- Tasks with dependencies start 'waiting'; returned are the tasks whose status is not
-- 'pending' after enqueue (waiting, or cancelled because a dependency already failed).
-- Ids in OmniQ's reserved namespace (omniq_reserved_id) are refused; an id that exists
-- raises unique_violation. Nothing is stored when anything is refused. Index: tasks_pkey.
-- The work is omniq_insert_tasks' (omniq_insert_unique_tasks' when a task has a unique key).
-- SECURITY DEFINER: runs with its owner's rights, so a producer role needs EXECUTE on this
-- function and no write privilege on any table (sql/roles.sql).
DECLARE
    v_waiting TEXT[];
BEGIN
    IF jsonb_path_exists(p_tasks, '$[*].unique_key ? (@ != null)') THEN  -- sql/functions/unique.sql
        SELECT i.waiting INTO v_waiting FROM omniq_insert_unique_tasks(p_tasks) AS i;
    ELSE
        SELECT i.waiting INTO v_waiting FROM omniq_insert_tasks(p_tasks, false) AS i;
    END IF;
    IF v_waiting IS NOT NULL THEN
        RETURN QUERY SELECT t.id, t.status FROM "tasks" AS t WHERE t.id = ANY (v_waiting);
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_enqueue_v1(JSONB) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_enqueue(p_tasks JSONB)
RETURNS TABLE (id TEXT, status TEXT)
LANGUAGE sql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- The psql API's name for omniq_enqueue_v1 (same argument, same rows): stable for SQL callers
-- whatever protocol version the Python code speaks. SECURITY DEFINER, not executable by PUBLIC.
    SELECT e.id, e.status FROM omniq_enqueue_v1(p_tasks) AS e
$$;
REVOKE EXECUTE ON FUNCTION omniq_enqueue(JSONB) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_insert_tasks(p_tasks JSONB, p_internal BOOLEAN,
    OUT inserted INTEGER, OUT waiting TEXT[])
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Insert a JSON array of tasks. No 'enqueued' event is stored: a task's history derives it
-- from created_at when read (list_events, sql/queries/events.sql). Ids and queue names are
-- checked as the Python model checks them (omniq_checked_task_id, omniq_checked_queue_name:
-- this and omniq_enqueue_one_v1, which checks alike, are the ways tasks enter the table for
-- every role but the owner). From a producer (p_internal false) an id in OmniQ's reserved
-- namespace is refused and an id that exists raises unique_violation. OmniQ's own fires and
-- callbacks (p_internal) may use reserved ids and skip an id that exists: only OmniQ writes
-- those ids, under a lock that serialises the writers of one id, so firing again is harmless.
-- Tasks with dependencies start 'waiting' and are resolved at once (strict: an unknown
-- dependency raises) and again when the transaction commits (trigger
-- tasks_waiting_committed). A task whose run_at has not come is pending and delayed: it stays
-- off the ready path until the dequeue clears delayed. Returns how many were inserted, and
-- the ids of those inserted waiting (resolved since: pending, cancelled or still waiting).
-- Wakes the workers: one NOTIFY per queue that got pending tasks, payload the queue name (a
-- batch of 10,000 sends one), delivered when the transaction commits. The functions that
-- insert tasks (this one, omniq_enqueue_one_v1) send it rather than a trigger on tasks, whose
-- transition table cost each enqueue 25-40 us (migration 0017).
-- Index: tasks_pkey.
DECLARE
    v_woken TEXT[];
BEGIN
    IF p_internal THEN
        SELECT coalesce(jsonb_agg(e.doc), '[]') INTO p_tasks
        FROM jsonb_array_elements(p_tasks) AS e(doc)
        WHERE NOT EXISTS (SELECT 1 FROM "tasks" AS x WHERE x.id = e.doc ->> 'id');
    END IF;
    WITH new_rows AS (
        INSERT INTO "tasks" AS t (id, queue_name, priority, status, delayed, func, args, kwargs,
            created_at, run_at, expires_at, retry_count, max_retries, retry_delay,
            dependencies, callbacks, metadata, task_data)
        SELECT omniq_checked_task_id(r.id, p_internal), omniq_checked_queue_name(r.queue_name),
               coalesce(r.priority, 0),
               CASE WHEN jsonb_array_length(coalesce(r.dependencies, '[]')) > 0
                    THEN 'waiting' ELSE 'pending' END,
               jsonb_array_length(coalesce(r.dependencies, '[]')) = 0
                   AND coalesce(r.run_at > now(), false),
               r.func, coalesce(r.args, '[]'), coalesce(r.kwargs, '{}'),
               coalesce(r.created_at, now()), r.run_at, r.expires_at,
               coalesce(r.retry_count, 0), coalesce(r.max_retries, 3), coalesce(r.retry_delay, 1.0),
               coalesce(r.dependencies, '[]'), coalesce(r.callbacks, '{}'),
               coalesce(r.metadata, '{}'), coalesce(r.task_data, '{}')
        FROM jsonb_populate_recordset(NULL::"tasks", p_tasks) AS r
        RETURNING t.id, t.status, t.queue_name
    )
    SELECT count(*), array_agg(n.id) FILTER (WHERE n.status = 'waiting'),
           array_agg(DISTINCT n.queue_name) FILTER (WHERE n.status = 'pending')
    INTO inserted, waiting, v_woken FROM new_rows AS n;
    PERFORM pg_notify(omniq_channel_of('tasks', current_schema()), q) FROM unnest(v_woken) AS q;

    IF waiting IS NOT NULL THEN
        PERFORM omniq_check_new_dependencies(waiting);
        PERFORM omniq_resolve_waiting(waiting, false);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION omniq_refuse_id(p_id TEXT) RETURNS TEXT
LANGUAGE plpgsql AS $$
-- Raise the error for a task id omniq_insert_tasks refuses: not 1-255 printable characters
-- without spaces or commas (what the Python model checks), or in OmniQ's reserved namespace.
BEGIN
    IF omniq_reserved_id(p_id) THEN
        RAISE EXCEPTION 'task id % is reserved for OmniQ''s own tasks (schedule fires and callbacks)',
            quote_literal(p_id) USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Ids ending in ''@<UTC timestamp>'', ''@on_success'', ''@on_failure'' or ''@on_complete'' are reserved; choose another id.';
    END IF;
    RAISE EXCEPTION 'a task id must be 1-255 printable characters without spaces or commas, got %',
        quote_literal(left(p_id, 300)) USING ERRCODE = 'invalid_parameter_value',
        HINT = 'Omit the id to get a generated one.';
END
$$;

CREATE OR REPLACE FUNCTION omniq_refuse_queue_name(p_queue_name TEXT) RETURNS TEXT
LANGUAGE plpgsql AS $$
-- Raise the error for a queue name that is blank, longer than 200 characters, or holds
-- control characters (what the Python model checks).
BEGIN
    RAISE EXCEPTION 'queue_name must be a non-empty string of at most 200 characters without control characters, got %',
        quote_literal(left(p_queue_name, 300)) USING ERRCODE = 'invalid_parameter_value';
END
$$;

CREATE OR REPLACE FUNCTION omniq_checked_task_id(p_id TEXT, p_internal BOOLEAN) RETURNS TEXT
LANGUAGE sql VOLATILE AS $$
-- The id a new task is stored under: a generated one (omniq_new_id) for NULL, p_id when it is a
-- valid task id (omniq_valid_id) outside OmniQ's reserved namespace, or, from OmniQ itself
-- (p_internal: schedule fires, callbacks), inside it; anything else raises (omniq_refuse_id).
-- One expression with no SET clause: the planner inlines it into the INSERT that calls it.
    SELECT CASE WHEN p_id IS NULL THEN omniq_new_id()
                WHEN omniq_valid_id(p_id, 255)
                     AND (p_internal OR strpos(p_id, '@') = 0 OR NOT omniq_reserved_id(p_id))
                THEN p_id
                ELSE omniq_refuse_id(p_id) END
$$;

CREATE OR REPLACE FUNCTION omniq_checked_queue_name(p_queue_name TEXT) RETURNS TEXT
LANGUAGE sql VOLATILE AS $$
-- The queue a new task is stored in: 'default' for NULL, p_queue_name when valid
-- (omniq_valid_queue_name); anything else raises (omniq_refuse_queue_name). Inlined like
-- omniq_checked_task_id.
    SELECT CASE WHEN p_queue_name IS NULL THEN 'default'
                WHEN omniq_valid_queue_name(p_queue_name) THEN p_queue_name
                ELSE omniq_refuse_queue_name(p_queue_name) END
$$;

CREATE OR REPLACE FUNCTION omniq_enqueue_one_v1(p_id TEXT, p_func TEXT, p_created_at TIMESTAMPTZ,
    p_queue_name TEXT, p_priority INTEGER, p_args JSONB, p_kwargs JSONB, p_run_at TIMESTAMPTZ,
    p_expires_at TIMESTAMPTZ, p_retry_count INTEGER, p_max_retries INTEGER, p_retry_delay REAL,
    p_callbacks JSONB, p_metadata JSONB, p_task_data JSONB)
RETURNS TEXT
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Insert one task that has no dependencies and no unique key (what enqueue() sends for most
-- tasks) and return its id. The same task through omniq_enqueue_v2 is stored alike: the same
-- checks (omniq_checked_task_id, omniq_checked_queue_name), unique_violation for an id that
-- exists, pending (delayed while run_at has not come), and one NOTIFY of its queue at commit.
-- Typed arguments, every one given (a NULL where the table wants a value is refused by its
-- NOT NULL), and one INSERT instead of omniq_insert_tasks' batch path: 321 against 395 us per
-- durable call (migration 0018). Index: tasks_pkey.
-- SECURITY DEFINER: a producer role needs EXECUTE on this function only (sql/roles.sql).
DECLARE
    v_id TEXT := omniq_checked_task_id(p_id, false);
    v_queue TEXT := omniq_checked_queue_name(p_queue_name);
BEGIN
    INSERT INTO "tasks" (id, queue_name, priority, status, delayed, func, args, kwargs,
        created_at, run_at, expires_at, retry_count, max_retries, retry_delay, callbacks,
        metadata, task_data)
    VALUES (v_id, v_queue, p_priority, 'pending', coalesce(p_run_at > now(), false), p_func,
        p_args, p_kwargs, p_created_at, p_run_at, p_expires_at, p_retry_count, p_max_retries,
        p_retry_delay, p_callbacks, p_metadata, p_task_data);
    PERFORM pg_notify(omniq_channel_of('tasks', current_schema()), v_queue);
    RETURN v_id;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_enqueue_one_v1(TEXT, TEXT, TIMESTAMPTZ, TEXT, INTEGER, JSONB,
    JSONB, TIMESTAMPTZ, TIMESTAMPTZ, INTEGER, INTEGER, REAL, JSONB, JSONB, JSONB) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_enqueue_calls_v1(p_template JSONB, p_ids TEXT[],
    p_created_at TIMESTAMPTZ[], p_calls JSONB)
RETURNS INTEGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Insert one task per call of one function (what Python's enqueue_calls sends when the
-- template has no dependencies) and return how many. p_template holds the columns every task
-- shares (keys = tasks columns, omitted keys take the defaults, as in omniq_enqueue); the
-- n-th task takes the n-th id (NULL: a generated one), created_at (NULL: now()) and call: a
-- JSON array of positional arguments (args) or an object of keyword arguments (kwargs).
-- Stored as omniq_enqueue_v2 stores the same tasks: the same checks, unique_violation for an
-- id that exists, pending (delayed while run_at has not come), one NOTIFY of the queue at
-- commit. Typed arrays instead of one JSON document per task: 10,000 calls in 138 against
-- 167 ms through omniq_enqueue_v2 (migration 0019). Nothing is stored when anything is
-- refused. Index: tasks_pkey.
-- SECURITY DEFINER: a producer role needs EXECUTE on this function only (sql/roles.sql).
DECLARE
    v_queue TEXT;
    v_count INTEGER;
BEGIN
    -- "dependencies": [] and "unique_key": null say there are none, as in omniq_enqueue.
    IF jsonb_typeof(p_template) IS DISTINCT FROM 'object' OR p_template ->> 'func' IS NULL
       OR p_template ?| '{id,args,kwargs,created_at}'
       OR coalesce(p_template -> 'dependencies', '[]') <> '[]'
       OR coalesce(p_template -> 'unique_key', 'null') <> 'null' THEN
        RAISE EXCEPTION 'the template must be a JSON object with func and without id, args, kwargs, created_at, dependencies or unique_key, got %',
            left(p_template::text, 300) USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Each task''s id, created_at and arguments come from p_ids, p_created_at and p_calls; enqueue tasks with dependencies or a unique key through omniq_enqueue.';
    END IF;
    IF jsonb_typeof(p_calls) IS DISTINCT FROM 'array'
       OR jsonb_array_length(p_calls) <> coalesce(cardinality(p_ids), 0)
       OR jsonb_array_length(p_calls) <> coalesce(cardinality(p_created_at), 0) THEN
        RAISE EXCEPTION 'p_calls must be a JSON array with one call per id and created_at, got % calls, % ids and % created_at',
            CASE WHEN jsonb_typeof(p_calls) = 'array' THEN jsonb_array_length(p_calls)::text
                 ELSE 'no array of' END,
            coalesce(cardinality(p_ids), 0), coalesce(cardinality(p_created_at), 0)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_queue := omniq_checked_queue_name(p_template ->> 'queue_name');
    INSERT INTO "tasks" (id, queue_name, priority, status, delayed, func, args, kwargs,
        created_at, run_at, expires_at, retry_count, max_retries, retry_delay, callbacks,
        metadata, task_data)
    SELECT omniq_checked_task_id(c.id, false), v_queue, coalesce(r.priority, 0), 'pending',
           coalesce(r.run_at > now(), false), r.func,
           CASE jsonb_typeof(c.call) WHEN 'array' THEN c.call WHEN 'object' THEN '[]'
                ELSE omniq_refuse_call(c.n, c.call) END,
           CASE jsonb_typeof(c.call) WHEN 'object' THEN c.call ELSE '{}' END,
           coalesce(c.created_at, now()), r.run_at, r.expires_at, coalesce(r.retry_count, 0),
           coalesce(r.max_retries, 3), coalesce(r.retry_delay, 1.0), coalesce(r.callbacks, '{}'),
           coalesce(r.metadata, '{}'), coalesce(r.task_data, '{}')
    FROM jsonb_populate_record(NULL::"tasks", p_template) AS r
    CROSS JOIN ROWS FROM (unnest(p_ids), unnest(p_created_at), jsonb_array_elements(p_calls))
        WITH ORDINALITY AS c(id, created_at, call, n);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM pg_notify(omniq_channel_of('tasks', current_schema()), v_queue);
    END IF;
    RETURN v_count;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_enqueue_calls_v1(JSONB, TEXT[], TIMESTAMPTZ[], JSONB) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_refuse_call(p_n BIGINT, p_call JSONB) RETURNS JSONB
LANGUAGE plpgsql AS $$
-- Raise the error for a call of omniq_enqueue_calls_v1 that is neither a JSON array
-- (positional arguments) nor an object (keyword arguments).
BEGIN
    RAISE EXCEPTION 'call % is %: each call is a JSON array of positional arguments or an object of keyword arguments',
        p_n - 1, left(p_call::text, 300) USING ERRCODE = 'invalid_parameter_value';
END
$$;

CREATE OR REPLACE FUNCTION omniq_check_new_dependencies(p_ids TEXT[])
RETURNS VOID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- At enqueue: every dependency of the new waiting tasks p_ids must exist (else
-- foreign_key_violation) and no dependency cycle may run through them (else
-- invalid_parameter_value). The dependencies are locked FOR KEY SHARE until commit, so no
-- purge or delete removes one before the commit-time resolution has seen it.
-- Index: tasks_pkey.
DECLARE
    v_bad RECORD;
    v_cycle TEXT;
BEGIN
    PERFORM 1 FROM "tasks" AS x
    WHERE x.id IN (SELECT d.dep FROM "tasks" AS w
                   CROSS JOIN jsonb_array_elements_text(w.dependencies) AS d(dep)
                   WHERE w.id = ANY (p_ids))
    ORDER BY x.id FOR KEY SHARE;
    SELECT w.id, d.dep INTO v_bad
    FROM "tasks" AS w CROSS JOIN jsonb_array_elements_text(w.dependencies) AS d(dep)
    WHERE w.id = ANY (p_ids) AND NOT EXISTS (SELECT 1 FROM "tasks" AS x WHERE x.id = d.dep)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'task % depends on unknown task %', v_bad.id, v_bad.dep
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Enqueue the dependency first, or in the same enqueue_many call.';
    END IF;
    -- Only tasks of this batch can close a cycle: earlier tasks cannot name new ones.
    WITH RECURSIVE walk(start, id, path) AS (
        SELECT w.id, d.dep, ARRAY[w.id, d.dep]
        FROM "tasks" AS w CROSS JOIN jsonb_array_elements_text(w.dependencies) AS d(dep)
        WHERE w.id = ANY (p_ids) AND d.dep = ANY (p_ids)
        UNION ALL
        SELECT k.start, d.dep, k.path || d.dep
        FROM walk AS k JOIN "tasks" AS w ON w.id = k.id
        CROSS JOIN jsonb_array_elements_text(w.dependencies) AS d(dep)
        WHERE d.dep = ANY (p_ids) AND k.id <> k.start AND cardinality(k.path) <= cardinality(p_ids)
    )
    SELECT array_to_string(k.path, ' -> ') INTO v_cycle FROM walk AS k WHERE k.id = k.start LIMIT 1;
    IF v_cycle IS NOT NULL THEN
        RAISE EXCEPTION 'dependency cycle: %', v_cycle
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A task cannot wait for itself, directly or through others.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION omniq_dequeue_v1(p_queues TEXT[], p_limit INTEGER, p_worker_id TEXT)
RETURNS TABLE (id TEXT, queue_name TEXT, priority INTEGER, status TEXT, func TEXT, args JSONB,
    kwargs JSONB, created_at TIMESTAMPTZ, run_at TIMESTAMPTZ, expires_at TIMESTAMPTZ,
    retry_count INTEGER, max_retries INTEGER, retry_delay REAL, dependencies JSONB,
    callbacks JSONB, metadata JSONB, task_data JSONB, started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ, worker_id TEXT, attempts INTEGER)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
#variable_conflict use_column
-- Hand out up to p_limit ready tasks, marked running, from the queues in the given order
-- (the first queue is drained first); within a queue by priority DESC, created_at ASC.
-- SKIP LOCKED: concurrent callers never receive the same task. Index: tasks_pending_idx (the
-- range delayed = false of each queue: delayed tasks are never read here).
-- First, expired unstarted tasks of these queues end 'expired' (omniq_expire_tasks) and
-- delayed tasks whose run_at has come join the ready range (index tasks_delayed_until_idx);
-- one statement tells whether either is needed, and whether a queue is paused or limited,
-- answered by the indexes alone.
-- started_at is clock_timestamp(), not now(): a row committed while this call waited on a
-- lock would otherwise look as if it started before it was enqueued.
-- Holding tasks counts as a heartbeat of a registered worker; an unknown worker id is not
-- registered here (its heartbeat registers it, with its own stale_after).
-- Queue settings (sql/functions/queues.sql): a paused queue is skipped (its delayed and
-- expired tasks are still seen to above); a queue with max_running or a rate gives at most
-- its allowance, computed with its omniq_queues row locked until commit, so concurrent
-- dequeuers of that queue take turns and no race exceeds a limit. Queues without a row (or
-- with no limit set) cost one more EXISTS probe of omniq_queues_pkey in the first statement
-- (2-4 microseconds) and take no lock.
DECLARE
    v_queue TEXT;
    v_got INTEGER := 0;
    v_n INTEGER;
    v_expire BOOLEAN;
    v_due BOOLEAN;
    v_limits BOOLEAN;
    v_limited TEXT[];
    v_allow INTEGER;
BEGIN
    SELECT EXISTS (SELECT 1 FROM "tasks" AS t
                   WHERE t.status IN ('pending', 'waiting') AND t.expires_at <= now()
                     AND t.queue_name = ANY (p_queues)),
           EXISTS (SELECT 1 FROM "tasks" AS t
                   WHERE t.status = 'pending' AND t.delayed AND t.queue_name = ANY (p_queues)
                     AND t.run_at <= now()),
           EXISTS (SELECT 1 FROM omniq_queues AS q
                   WHERE q.name = ANY (p_queues)
                     AND (q.paused OR q.max_running IS NOT NULL OR q.rate IS NOT NULL))
    INTO v_expire, v_due, v_limits;
    IF v_expire THEN
        PERFORM omniq_expire_tasks(p_queues);
    END IF;
    IF v_due THEN
        UPDATE "tasks" AS t SET delayed = false
        WHERE t.id IN (SELECT d.id FROM "tasks" AS d
                       WHERE d.status = 'pending' AND d.delayed AND d.queue_name = ANY (p_queues)
                         AND d.run_at <= now()
                       ORDER BY d.run_at LIMIT 10000
                       FOR NO KEY UPDATE SKIP LOCKED);
    END IF;
    IF v_limits THEN
        -- Of these queues, those paused or limited (sql/functions/queues.sql), their rows locked
        -- in name order (two dequeuers locking overlapping sets never deadlock) until commit.
        SELECT array_agg(l.name) INTO v_limited
        FROM (SELECT q.name FROM omniq_queues AS q
              WHERE q.name = ANY (p_queues)
                AND (q.paused OR q.max_running IS NOT NULL OR q.rate IS NOT NULL)
              ORDER BY q.name FOR NO KEY UPDATE) AS l;
    END IF;
    FOREACH v_queue IN ARRAY p_queues LOOP
        v_allow := p_limit - v_got;
        IF v_queue = ANY (v_limited) THEN
            v_allow := omniq_queue_allowance(v_queue, v_allow);
            CONTINUE WHEN v_allow <= 0;
        END IF;
        RETURN QUERY
        WITH picked AS (
            SELECT t.id FROM "tasks" AS t
            WHERE t.status = 'pending' AND t.queue_name = v_queue AND t.delayed = false
              AND (t.run_at IS NULL OR t.run_at <= now())
              AND (t.expires_at IS NULL OR t.expires_at > now())
            ORDER BY t.priority DESC, t.created_at ASC
            LIMIT v_allow
            FOR UPDATE SKIP LOCKED
        ), taken AS (
            UPDATE "tasks" AS t
            SET status = 'running', started_at = clock_timestamp(), finished_at = NULL,
                worker_id = p_worker_id, attempts = t.attempts + 1
            FROM picked WHERE t.id = picked.id
            RETURNING t.id, t.queue_name, t.priority, t.status, t.func, t.args, t.kwargs,
                t.created_at, t.run_at, t.expires_at, t.retry_count, t.max_retries,
                t.retry_delay, t.dependencies, t.callbacks, t.metadata, t.task_data,
                t.started_at, t.finished_at, t.worker_id, t.attempts
        )
        SELECT k.* FROM taken AS k;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_queue = ANY (v_limited) THEN
            PERFORM omniq_queue_took(v_queue, v_n);
        END IF;
        v_got := v_got + v_n;
        EXIT WHEN v_got >= p_limit;
    END LOOP;
    IF v_got > 0 AND p_worker_id IS NOT NULL THEN
        -- Only when the last heartbeat is older than a tenth of stale_after (at most 1 s): a
        -- worker taking one task at a time then writes its row about once a second, not once
        -- per task, and stays at least 90% of stale_after away from being rescued.
        UPDATE omniq_workers AS w SET last_heartbeat = now()
        WHERE w.id = p_worker_id
          AND w.last_heartbeat < now() - least(w.stale_after / 10, interval '1 second');
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_dequeue_v1(TEXT[], INTEGER, TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_retry_delay(p_retry_delay REAL, p_retry_count INTEGER)
RETURNS INTERVAL
LANGUAGE sql VOLATILE AS $$
-- Exponential backoff with jitter: retry_delay * 2^retry_count * a random factor in
-- [0.75, 1.25), capped at one hour. retry_count is the number of retries already made.
    SELECT make_interval(secs => least(3600.0,
        p_retry_delay * power(2, least(p_retry_count, 30)) * (0.75 + 0.5 * random())))
$$;

CREATE OR REPLACE FUNCTION omniq_finish_tasks_v1(p_outcomes JSONB, p_worker_id TEXT)
RETURNS TABLE (id TEXT, status TEXT)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp
SET plan_cache_mode = force_generic_plan AS $$
-- Record a batch of runs in one transaction. p_outcomes is a JSON array of
-- {id, attempt, outcome: success|failure|expired|aborted, result, error, error_type, traceback,
--  started_at, finished_at, execution_time}. Only tasks still running in that attempt are
-- touched (a rescued task's late outcome is ignored); they are absent from the result.
-- A failure with retries left is not an ending: the task goes back to pending, delayed by
-- omniq_retry_delay(), with 'executing' and 'retry' events, unless someone asked to abort it
-- (abort_requested_at). Every other outcome ends the task through omniq_end_tasks, which
-- ends a task with an abort request 'cancelled' whatever the outcome ('aborted': the worker
-- stopped it on the request). A deadlock (possible only around dependency graphs) is
-- retried here, so it never reaches the worker. Index: tasks_pkey.
DECLARE
    v_ids TEXT[];
    v_statuses TEXT[];
    v_try INTEGER := 0;
    v_running CONSTANT TEXT := 'running';  -- a parameter, not a literal: see omniq_end_tasks
BEGIN
    LOOP
        BEGIN
            v_ids := NULL;
            v_statuses := NULL;
            IF p_outcomes @> '[{"outcome": "failure"}]' THEN  -- any failure in the batch?
                WITH o AS MATERIALIZED (
                    SELECT * FROM jsonb_to_recordset(p_outcomes) AS x(id TEXT, attempt INTEGER,
                        outcome TEXT, error TEXT, error_type TEXT, traceback TEXT,
                        started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, execution_time REAL)
                    WHERE x.outcome = 'failure'
                ), retried AS (
                    UPDATE "tasks" AS t
                    SET status = 'pending', retry_count = t.retry_count + 1,
                        run_at = now() + omniq_retry_delay(t.retry_delay, t.retry_count),
                        delayed = t.retry_delay > 0, finished_at = NULL,
                        started_at = coalesce(o.started_at, t.started_at)
                    FROM o
                    WHERE t.id = o.id AND t.attempts = o.attempt AND t.status = v_running
                      AND t.retry_count < t.max_retries AND t.abort_requested_at IS NULL
                    RETURNING t.id, t.queue_name, t.run_at, t.retry_count, t.started_at,
                              o.error, o.error_type, o.traceback, o.finished_at, o.execution_time
                ), logged AS (
                    INSERT INTO "events" (task_id, event_type, timestamp, queue_name, worker_id,
                        message, error_type, error_message, traceback, execution_time)
                    SELECT r.id, e.event_type, e.at, r.queue_name, p_worker_id, e.message,
                           e.error_type, e.error, e.traceback, e.execution_time
                    FROM retried AS r
                    CROSS JOIN LATERAL (VALUES
                        ('executing', coalesce(r.started_at, now()), NULL::text, NULL::real,
                         NULL::text, NULL::text, NULL::text),
                        ('retry', coalesce(r.finished_at, now()),
                         'retry ' || r.retry_count || ' at ' || r.run_at, r.execution_time,
                         r.error_type, r.error, r.traceback)
                    ) AS e(event_type, at, message, execution_time, error_type, error, traceback)
                )
                SELECT array_agg(r.id), array_agg('pending'::text) INTO v_ids, v_statuses
                FROM retried AS r;
            END IF;
            SELECT coalesce(v_ids, '{}') || array_agg(e.id),
                   coalesce(v_statuses, '{}') || array_agg(e.status)
            INTO v_ids, v_statuses
            FROM omniq_end_tasks(p_outcomes, '{running}', p_worker_id) AS e;
            EXIT;
        EXCEPTION WHEN deadlock_detected THEN
            v_try := omniq_after_deadlock(v_try);
        END;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(v_ids, v_statuses);
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_finish_tasks_v1(JSONB, TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_end_tasks(p_ends JSONB, p_from TEXT[], p_worker_id TEXT DEFAULT NULL)
RETURNS TABLE (id TEXT, status TEXT)
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
-- THE way a task ends. Each element of p_ends names a task and its final status; a task is
-- ended only while its status is one of p_from (and, if the element carries an attempt,
-- while it runs in that attempt), so a task ends once however many paths race for it.
-- For every task ended, in this transaction and exactly once:
--   * status completed, failed, expired or cancelled, finished_at, off every ready index;
--   * its result row (inserted, or replaced after an operator's retry), expiring after the
--     task's result_ttl when it has one;
--   * its final event, stored unless the task completed with no message (a worker's success:
--     list_events derives it, and the run's 'executing', from the task and result rows),
--     after an 'executing' event when a worker reports a failure;
--   * its callbacks, enqueued as tasks with reserved ids (omniq_callback_id): on_success when
--     completed, on_failure when failed or expired, on_complete always;
--   * its dependents: a waiting task whose dependencies all completed becomes pending; one
--     with a dependency that did not complete is cancelled, with all the tasks waiting for it
--     (omniq_cancel_dependents), through this same routine.
-- Callers: the worker (omniq_finish_tasks_v1), rescue out of retries, expiry (dequeue and
-- cleanup), cancel (Python, CLI, psql), cascaded cancellation, omniq_update_task_v1, abort.
-- A running task someone asked to abort (abort_requested_at, sql/functions/abort.sql) ends
-- 'cancelled' whatever the element says, with no result value, error_type TaskAborted and
-- an error and final event naming who asked (omniq_abort_text): the request, once recorded,
-- decides how the task ends, on every path.
-- p_ends: JSON array of {id, status: completed|failed|expired|cancelled, or outcome:
-- success|failure|expired|aborted as a worker reports it, attempt, result, error, error_type,
-- traceback, started_at, finished_at, execution_time, message (of the final event),
-- worker_id (else p_worker_id)}. Returns the tasks ended with their final status.
-- Index: tasks_pkey, results_pkey; tasks_waiting_ids_idx and tasks_waiting_idx for dependents.
-- force_generic_plan keeps p_from a parameter, so the batch meets tasks through tasks_pkey.
-- With the statuses folded in as constants the planner may drive the join from the partial
-- tasks_running_idx (estimated at 1 row when statistics were taken while nothing ran) and
-- re-scan the batch once per running task: measured 300-1,000 ms per batch of 200 outcomes
-- with 1,500 running tasks (4 workers), against 5-10 ms through the primary key.
DECLARE
    v_ids TEXT[];
    v_statuses TEXT[];
    v_completed TEXT[];
    v_dead TEXT[];
    v_callbacks JSONB;
BEGIN
    WITH o AS MATERIALIZED (
        SELECT x.*, coalesce(x.status, CASE x.outcome WHEN 'success' THEN 'completed'
                                                      WHEN 'failure' THEN 'failed'
                                                      WHEN 'aborted' THEN 'cancelled'
                                                      ELSE x.outcome END) AS final
        FROM jsonb_to_recordset(p_ends) AS x(id TEXT, status TEXT, outcome TEXT, attempt INTEGER,
            result JSONB, error TEXT, error_type TEXT, traceback TEXT, started_at TIMESTAMPTZ,
            finished_at TIMESTAMPTZ, execution_time REAL, message TEXT, worker_id TEXT)
    ), ended AS (
        UPDATE "tasks" AS t
        SET status = CASE WHEN t.abort_requested_at IS NULL THEN o.final ELSE 'cancelled' END,
            delayed = false,
            finished_at = coalesce(o.finished_at, now()),
            started_at = coalesce(o.started_at, t.started_at)
        FROM o
        WHERE t.id = o.id AND t.status = ANY (p_from)
          AND (o.attempt IS NULL OR t.attempts = o.attempt)
          AND o.final IN ('completed', 'failed', 'expired', 'cancelled')
        RETURNING t.id, t.status, t.queue_name, t.callbacks, t.task_data, t.started_at,
                  t.finished_at, o.outcome, o.traceback, o.execution_time,
                  coalesce(o.worker_id, p_worker_id) AS worker_id,
                  CASE WHEN t.abort_requested_at IS NULL THEN o.result END AS result,
                  CASE WHEN t.abort_requested_at IS NULL THEN o.error
                       ELSE omniq_abort_text(t.abort_requested_by, t.abort_reason) END AS error,
                  CASE WHEN t.abort_requested_at IS NULL THEN o.error_type
                       ELSE 'TaskAborted' END AS error_type,
                  CASE WHEN t.abort_requested_at IS NULL THEN o.message
                       ELSE omniq_abort_text(t.abort_requested_by, t.abort_reason)
                            || coalesce(' (' || o.message || ')', '') END AS message
    ), results_written AS (
        INSERT INTO "results" AS r (task_id, status, result, error, error_type, traceback,
            created_at, started_at, completed_at, expires_at, worker_id, execution_time, result_data)
        SELECT u.id, CASE u.status WHEN 'completed' THEN 'success' WHEN 'failed' THEN 'failure'
                                   ELSE u.status END,
               u.result, u.error, u.error_type, u.traceback, now(), u.started_at, u.finished_at,
               u.finished_at + make_interval(secs => (u.task_data ->> 'result_ttl')::float8),
               u.worker_id, u.execution_time, '{}'
        FROM ended AS u
        ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, result = excluded.result,
            error = excluded.error, error_type = excluded.error_type,
            traceback = excluded.traceback, started_at = excluded.started_at,
            completed_at = excluded.completed_at, expires_at = excluded.expires_at,
            worker_id = excluded.worker_id, execution_time = excluded.execution_time
    ), logged AS (
        -- The final event, but for a worker's success: the task row (started_at) and the
        -- result row say all of that run, and list_events derives its 'executing' and
        -- 'completed' from them. A worker's failure also stores its 'executing' (the start of
        -- that run, which an operator's retry would otherwise overwrite). The traceback is in
        -- the result only (list_events shows it on the final event).
        INSERT INTO "events" (task_id, event_type, timestamp, queue_name, worker_id,
            message, error_type, error_message, execution_time)
        SELECT u.id, e.event_type, e.at, u.queue_name, u.worker_id, e.message,
               e.error_type, e.error, e.execution_time
        FROM ended AS u
        CROSS JOIN LATERAL (VALUES
            ('executing', coalesce(u.started_at, now()), NULL::text, NULL::text, NULL::text,
             NULL::real),
            (u.status, u.finished_at, u.message, u.error_type, u.error, u.execution_time)
        ) AS e(event_type, at, message, error_type, error, execution_time)
        WHERE CASE WHEN e.event_type = 'executing' THEN u.outcome = 'failure' AND u.status = 'failed'
                   ELSE u.status <> 'completed' OR u.message IS NOT NULL END
    )
    SELECT array_agg(u.id), array_agg(u.status),
           array_agg(u.id) FILTER (WHERE u.status = 'completed'),
           array_agg(u.id) FILTER (WHERE u.status <> 'completed'),
           (SELECT jsonb_agg(jsonb_build_object(
                'id', omniq_callback_id(f.id, c.key), 'func', c.value, 'queue_name', f.queue_name,
                'args', jsonb_build_array(jsonb_build_object('task_id', f.id,
                    'status', CASE f.status WHEN 'completed' THEN 'success'
                                            WHEN 'failed' THEN 'failure' ELSE f.status END,
                    'result', f.result, 'error', f.error, 'error_type', f.error_type)),
                'metadata', jsonb_build_object('callback_of', f.id, 'callback', c.key)))
            FROM ended AS f CROSS JOIN LATERAL jsonb_each_text(f.callbacks) AS c
            WHERE c.key = 'on_complete'
               OR (c.key = 'on_success' AND f.status = 'completed')
               OR (c.key = 'on_failure' AND f.status IN ('failed', 'expired')))
    INTO v_ids, v_statuses, v_completed, v_dead, v_callbacks
    FROM ended AS u;

    IF v_callbacks IS NOT NULL THEN
        PERFORM omniq_insert_tasks(v_callbacks, true);
    END IF;
    IF v_ids IS NOT NULL AND EXISTS (SELECT 1 FROM "tasks" AS t WHERE t.status = 'waiting') THEN
        IF v_dead IS NOT NULL THEN
            PERFORM omniq_cancel_dependents(v_dead);
        END IF;
        IF v_completed IS NOT NULL THEN
            PERFORM omniq_release_dependents(v_completed);
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_ids, v_statuses);
END
$$;

CREATE OR REPLACE FUNCTION omniq_cancel_dependents(p_dead TEXT[])
RETURNS VOID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Cancel every task waiting, directly or through others, for one of p_dead (tasks that
-- failed, expired or were cancelled). The whole set is computed first, then locked once, in
-- id order, so two cascades that meet in a shared dependent never deadlock; a task that
-- changed meanwhile (cancelled by the other cascade) is skipped. Then ended through
-- omniq_end_tasks. Index: tasks_waiting_idx (GIN, one probe per level).
DECLARE
    v_frontier TEXT[] := p_dead;
    v_closure TEXT[] := '{}';
    v_next TEXT[];
    v_ends JSONB;
BEGIN
    LOOP
        SELECT array_agg(t.id) INTO v_next FROM "tasks" AS t
        WHERE t.status = 'waiting' AND t.dependencies ?| v_frontier
          AND NOT (t.id = ANY (v_closure));
        EXIT WHEN v_next IS NULL;
        v_closure := v_closure || v_next;
        v_frontier := v_next;
    END LOOP;
    IF cardinality(v_closure) = 0 THEN
        RETURN;
    END IF;
    SELECT jsonb_agg(jsonb_build_object('id', l.id, 'status', 'cancelled',
               'error', 'a dependency failed, expired or was cancelled',
               'error_type', 'TaskCancelled',
               'message', 'a dependency failed, expired or was cancelled'))
    INTO v_ends
    FROM (SELECT t.id FROM "tasks" AS t WHERE t.id = ANY (v_closure) AND t.status = 'waiting'
          ORDER BY t.id FOR NO KEY UPDATE) AS l;
    IF v_ends IS NOT NULL THEN
        PERFORM omniq_end_tasks(v_ends, '{waiting}');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION omniq_release_dependents(p_completed TEXT[])
RETURNS VOID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Re-examine the waiting tasks that name any of p_completed (tasks that just completed).
-- Index: tasks_waiting_idx (which waiting tasks name these).
DECLARE
    v_ids TEXT[];
BEGIN
    SELECT array_agg(t.id) INTO v_ids FROM "tasks" AS t
    WHERE t.status = 'waiting' AND t.dependencies ?| p_completed;
    IF v_ids IS NOT NULL THEN
        PERFORM omniq_resolve_waiting(v_ids, false);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION omniq_dependencies_state(p_dependencies JSONB,
    OUT ready BOOLEAN, OUT dead TEXT)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
-- Of a dependency list: whether every dependency completed (true for none), and, when one
-- failed, expired, was cancelled or no longer exists, why ('dependency x ended failed').
-- Index: tasks_pkey, one probe per dependency (a subquery each, never a scan of tasks).
    SELECT coalesce(bool_and(coalesce(s.status = 'completed', false)), true),
           min(CASE WHEN s.status IS NULL THEN 'dependency ' || s.dep || ' no longer exists'
                    WHEN s.status IN ('failed', 'cancelled', 'expired')
                    THEN 'dependency ' || s.dep || ' ended ' || s.status END)
    FROM (SELECT d.dep, (SELECT x.status FROM "tasks" AS x WHERE x.id = d.dep) AS status
          FROM jsonb_array_elements_text(p_dependencies) AS d(dep)) AS s
$$;

CREATE OR REPLACE FUNCTION omniq_resolve_waiting(p_ids TEXT[], p_lock_dependencies BOOLEAN)
RETURNS VOID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Waiting tasks among p_ids whose dependencies all completed become pending (delayed if
-- their run_at has not come); those with a dependency that failed, expired, was cancelled or
-- no longer exists are cancelled through omniq_end_tasks, with the tasks waiting for them.
-- The waiting tasks are locked first, in id order; with p_lock_dependencies (at commit) their
-- dependencies too, FOR SHARE: a transaction ending one of them holds its row until it
-- commits, so the classification below, made with a fresh snapshot, sees its final status.
-- Index: tasks_pkey.
DECLARE
    v_ready TEXT[];
    v_ends JSONB;
BEGIN
    PERFORM 1 FROM "tasks" AS t WHERE t.id = ANY (p_ids) AND t.status = 'waiting'
    ORDER BY t.id FOR NO KEY UPDATE;
    IF p_lock_dependencies THEN
        PERFORM 1 FROM "tasks" AS x
        WHERE x.id IN (SELECT d.dep FROM "tasks" AS w
                       CROSS JOIN jsonb_array_elements_text(w.dependencies) AS d(dep)
                       WHERE w.id = ANY (p_ids) AND w.status = 'waiting')
        ORDER BY x.id FOR SHARE;
    END IF;

    SELECT array_agg(w.id) FILTER (WHERE s.dead IS NULL AND s.ready),
           jsonb_agg(jsonb_build_object('id', w.id, 'status', 'cancelled',
               'error', s.dead, 'error_type', 'TaskCancelled', 'message', s.dead))
               FILTER (WHERE s.dead IS NOT NULL)
    INTO v_ready, v_ends
    FROM "tasks" AS w CROSS JOIN LATERAL omniq_dependencies_state(w.dependencies) AS s
    WHERE w.id = ANY (p_ids) AND w.status = 'waiting';

    IF v_ready IS NOT NULL THEN
        UPDATE "tasks" AS t SET status = 'pending', delayed = coalesce(t.run_at > now(), false)
        WHERE t.id = ANY (v_ready) AND t.status = 'waiting';
    END IF;
    IF v_ends IS NOT NULL THEN
        PERFORM omniq_end_tasks(v_ends, '{waiting}');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION omniq_resolve_committed(p_id TEXT)
RETURNS VOID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- The body of the commit-time trigger tasks_waiting_committed (migration 0006): a task
-- written 'waiting' in this transaction is resolved again now, its dependencies locked
-- FOR SHARE (see omniq_resolve_waiting). A deadlock with a transaction ending one of them
-- is retried, so it never fails the caller's commit. Index: tasks_pkey.
DECLARE
    v_try INTEGER := 0;
BEGIN
    LOOP
        BEGIN
            IF EXISTS (SELECT 1 FROM "tasks" AS t WHERE t.id = p_id AND t.status = 'waiting') THEN
                PERFORM omniq_resolve_waiting(ARRAY[p_id], true);
            END IF;
            RETURN;
        EXCEPTION WHEN deadlock_detected THEN
            v_try := omniq_after_deadlock(v_try);
        END;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION omniq_release_tasks_v1(p_ids TEXT[], p_worker_id TEXT, p_reason TEXT)
RETURNS INTEGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Give running tasks back to the queue unchanged (graceful shutdown): no retry is counted.
-- A task someone asked to abort ends 'cancelled' instead (omniq_end_aborted): it is not
-- counted. Index: tasks_pkey.
DECLARE
    v_n INTEGER;
BEGIN
    PERFORM omniq_end_aborted(ARRAY(
        SELECT t.id FROM "tasks" AS t
        WHERE t.id = ANY (p_ids) AND t.status = 'running' AND t.abort_requested_at IS NOT NULL
          AND t.worker_id IS NOT DISTINCT FROM p_worker_id), p_worker_id, p_reason);
    WITH released AS (
        UPDATE "tasks" AS t
        SET status = 'pending', worker_id = NULL, started_at = NULL,
            delayed = coalesce(t.run_at > now(), false)
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
REVOKE EXECUTE ON FUNCTION omniq_release_tasks_v1(TEXT[], TEXT, TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_cancel_tasks(p_ids TEXT[], p_reason TEXT)
RETURNS INTEGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Cancel tasks that have not started (pending, delayed or not, or waiting) through
-- omniq_end_tasks: a 'cancelled' result and event, on_complete callbacks, and the tasks
-- depending on them cancelled too. Running and finished tasks are left alone. Returns how
-- many of p_ids were cancelled. Index: tasks_pkey, then tasks_waiting_idx for dependents.
DECLARE
    v_ends JSONB;
    v_n INTEGER := 0;
    v_try INTEGER := 0;
BEGIN
    LOOP
        BEGIN
            SELECT jsonb_agg(jsonb_build_object('id', l.id, 'status', 'cancelled',
                       'error', p_reason, 'error_type', 'TaskCancelled', 'message', p_reason))
            INTO v_ends
            FROM (SELECT t.id FROM "tasks" AS t
                  WHERE t.id = ANY (p_ids) AND t.status IN ('pending', 'waiting')
                  ORDER BY t.id FOR NO KEY UPDATE) AS l;
            IF v_ends IS NOT NULL THEN
                SELECT count(*) INTO v_n
                FROM omniq_end_tasks(v_ends, '{pending,waiting}') AS e WHERE e.id = ANY (p_ids);
            END IF;
            RETURN v_n;
        EXCEPTION WHEN deadlock_detected THEN
            v_try := omniq_after_deadlock(v_try);
        END;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_cancel_tasks(TEXT[], TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_cancel_tasks_v1(p_ids TEXT[], p_reason TEXT) RETURNS INTEGER
LANGUAGE sql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Protocol version 1 of omniq_cancel_tasks (what Python calls). SECURITY DEFINER, not PUBLIC.
    SELECT omniq_cancel_tasks(p_ids, p_reason)
$$;
REVOKE EXECUTE ON FUNCTION omniq_cancel_tasks_v1(TEXT[], TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_expire_tasks(p_queues TEXT[] DEFAULT NULL)
RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- End unstarted tasks past expires_at as 'expired', in the given queues or all, through
-- omniq_end_tasks. Called by omniq_dequeue_v1 (when its index probe found one), so an expired
-- task is never handed out. The rows are locked in id order (a concurrent caller waits, then
-- finds them expired); a deadlock in the cascade is retried here. Index: tasks_expiry_idx.
DECLARE
    v_ends JSONB;
    v_n INTEGER := 0;
    v_try INTEGER := 0;
BEGIN
    LOOP
        BEGIN
            SELECT jsonb_agg(jsonb_build_object('id', l.id, 'status', 'expired',
                       'error', 'task expired at ' || l.expires_at || ' before it ran',
                       'error_type', 'TaskExpired', 'message', 'expired before it ran'))
            INTO v_ends
            FROM (SELECT t.id, t.expires_at FROM "tasks" AS t
                  WHERE t.status IN ('pending', 'waiting') AND t.expires_at <= now()
                    AND (p_queues IS NULL OR t.queue_name = ANY (p_queues))
                  ORDER BY t.id
                  FOR NO KEY UPDATE) AS l;
            IF v_ends IS NOT NULL THEN
                SELECT count(*) INTO v_n FROM omniq_end_tasks(v_ends, '{pending,waiting}');
            END IF;
            RETURN v_n;
        EXCEPTION WHEN deadlock_detected THEN
            v_try := omniq_after_deadlock(v_try);
        END;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION omniq_update_task_v1(p_id TEXT, p_queue_name TEXT, p_priority INTEGER,
    p_status TEXT, p_func TEXT, p_args JSONB, p_kwargs JSONB, p_run_at TIMESTAMPTZ,
    p_expires_at TIMESTAMPTZ, p_retry_count INTEGER, p_max_retries INTEGER, p_retry_delay REAL,
    p_dependencies JSONB, p_callbacks JSONB, p_metadata JSONB, p_task_data JSONB)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Overwrite a task's fields (update_task in Python); false when there is no such task.
-- A new final status (completed, failed, expired, cancelled) ends the task through
-- omniq_end_tasks, with its result, event, callbacks and dependents. Refused, with a hint:
-- leaving a final status (omniq_retry_tasks does that, with a fresh result) and changing the
-- dependencies after enqueue. Index: tasks_pkey.
DECLARE
    v_old RECORD;
    v_final CONSTANT TEXT[] := '{completed,failed,expired,cancelled}';
BEGIN
    SELECT t.status, t.dependencies INTO v_old FROM "tasks" AS t WHERE t.id = p_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_old.status = ANY (v_final) AND p_status IS DISTINCT FROM v_old.status THEN
        RAISE EXCEPTION 'task % is %: update_task cannot change a final status', p_id, v_old.status
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use retry_tasks (omniq retry, omniq_retry_tasks) to run it again.';
    END IF;
    IF p_dependencies IS DISTINCT FROM v_old.dependencies THEN
        RAISE EXCEPTION 'task %: dependencies cannot change after enqueue', p_id
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Cancel the task and enqueue a new one with the dependencies you want.';
    END IF;
    IF NOT omniq_valid_queue_name(p_queue_name) THEN
        PERFORM omniq_refuse_queue_name(p_queue_name);
    END IF;
    UPDATE "tasks" AS t
    SET queue_name = p_queue_name, priority = p_priority, func = p_func, args = p_args,
        kwargs = p_kwargs, run_at = p_run_at, expires_at = p_expires_at,
        retry_count = p_retry_count, max_retries = p_max_retries, retry_delay = p_retry_delay,
        callbacks = p_callbacks, metadata = p_metadata, task_data = p_task_data,
        status = CASE WHEN p_status = ANY (v_final) THEN t.status ELSE p_status END,
        -- an abort request belongs to the run it was made for: kept only while it runs
        abort_requested_at = CASE WHEN p_status = ANY (v_final) OR p_status = 'running'
                                  THEN t.abort_requested_at END,
        delayed = (CASE WHEN p_status = ANY (v_final) THEN t.status ELSE p_status END) = 'pending'
                  AND coalesce(p_run_at > now(), false)
    WHERE t.id = p_id;
    IF p_status = ANY (v_final) AND p_status IS DISTINCT FROM v_old.status THEN
        PERFORM omniq_end_tasks(jsonb_build_array(jsonb_build_object('id', p_id,
                    'status', p_status, 'error_type', CASE WHEN p_status <> 'completed' THEN 'TaskUpdated' END,
                    'error', CASE WHEN p_status <> 'completed' THEN 'set ' || p_status || ' by update_task' END,
                    'message', 'set ' || p_status || ' by update_task')),
                ARRAY[v_old.status]);
    ELSIF p_status = 'waiting' THEN
        PERFORM omniq_resolve_waiting(ARRAY[p_id], false);
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION omniq_delete_task_v1(p_id TEXT)
RETURNS BOOLEAN
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Delete one task (its result and events stay); false when there is no such task. Refused
-- while a waiting task depends on it, which would otherwise wait forever: cancel it instead
-- (its dependents are cancelled with it). The row is locked first, so a transaction still
-- enqueuing a dependent of it (which holds it FOR KEY SHARE) commits before the check.
-- Index: tasks_pkey, tasks_waiting_idx.
DECLARE
    v_dependent TEXT;
BEGIN
    PERFORM 1 FROM "tasks" AS t WHERE t.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT w.id INTO v_dependent FROM "tasks" AS w
    WHERE w.status = 'waiting' AND w.dependencies ? p_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'task % cannot be deleted: task % waits for it', p_id, v_dependent
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Cancel it instead (omniq cancel, cancel_task): its dependents are cancelled too.';
    END IF;
    DELETE FROM "tasks" AS t WHERE t.id = p_id;
    RETURN true;
END
$$;
