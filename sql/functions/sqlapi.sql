-- OmniQ's public SQL API: enqueue from psql, from a trigger, or from any language that can
-- run a SELECT. Tasks enqueued here are the same rows the Python API writes (through the same
-- omniq_enqueue), so Python workers run them like any other. See sql/README.md.
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_sqlapi#
CREATE OR REPLACE FUNCTION omniq_new_id() RETURNS TEXT
LANGUAGE sql VOLATILE AS $$
-- A UUIDv7-style task id, like the Python client's: 48 bits of Unix milliseconds, then random
-- bits. Time-ordered, so primary-key inserts append at the right edge of tasks_pkey.
-- One expression of pg_catalog functions, with no SET clause: the planner inlines it into the
-- query that calls it (5.7 us per id as a called function; the uuid cast adds the dashes).
    SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
            || '7' || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid::text
$$;

CREATE OR REPLACE FUNCTION omniq_add_task(
    func TEXT,
    args JSONB DEFAULT '[]',
    kwargs JSONB DEFAULT '{}',
    queue_name TEXT DEFAULT 'default',
    priority INTEGER DEFAULT 0,
    run_at TIMESTAMPTZ DEFAULT NULL,
    expires_at TIMESTAMPTZ DEFAULT NULL,
    max_retries INTEGER DEFAULT 3,
    retry_delay REAL DEFAULT 1.0,
    timeout REAL DEFAULT NULL,
    result_ttl REAL DEFAULT NULL,
    dependencies TEXT[] DEFAULT '{}',
    callbacks JSONB DEFAULT '{}',
    metadata JSONB DEFAULT '{}',
    id TEXT DEFAULT NULL,
    unique_key TEXT DEFAULT NULL,
    unique_states TEXT[] DEFAULT NULL,
    unique_window INTERVAL DEFAULT NULL,
    unique_mode TEXT DEFAULT 'skip')
RETURNS TEXT
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Enqueue one task and return its id; arguments are checked like the Python Task model does.
-- func is an import path ('package.module.function' or 'package.module:Class.method'), args a
-- JSON array, kwargs a JSON object; timeout and result_ttl are seconds. Call it with named
-- arguments, for example omniq_add_task('app.mail.send', '["a@example.com"]', queue_name => 'mail').
-- Runs in the caller's transaction: the task becomes visible, and wakes workers, on commit.
-- With unique_key (sql/README.md, "Unique tasks"): while a task with that key is in one of
-- unique_states (default pending, waiting, running), no second task is made and the id
-- returned is that task's; unique_window makes the key unique per window ('1 hour');
-- unique_mode 'replace' gives the waiting task these args, kwargs and run_at, 'keep_run_at'
-- these args and kwargs only.
-- Index: tasks_pkey (the insert), tasks_unique_key_idx; the NOTIFY comes from the insert trigger.
DECLARE
    v_id TEXT := coalesce(omniq_add_task.id, omniq_new_id());
    v_existing TEXT;
BEGIN
    IF omniq_add_task.func IS NULL OR omniq_add_task.func !~
            '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*[.:][A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$' THEN
        RAISE EXCEPTION 'func must be an import path like ''package.module.function'', got %',
            coalesce(quote_literal(omniq_add_task.func), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(omniq_add_task.args) IS DISTINCT FROM 'array'
       OR jsonb_typeof(omniq_add_task.kwargs) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'args must be a JSON array and kwargs a JSON object, got % and %',
            omniq_add_task.args, omniq_add_task.kwargs
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF omniq_add_task.queue_name IS NULL OR btrim(omniq_add_task.queue_name) = ''
       OR length(omniq_add_task.queue_name) > 200 THEN
        RAISE EXCEPTION 'queue_name must be a non-empty string of at most 200 characters, got %',
            coalesce(quote_literal(omniq_add_task.queue_name), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_id !~ '^[^\s,[:cntrl:]]{1,255}$' THEN
        RAISE EXCEPTION 'a task id must be 1-255 printable characters without spaces or commas, got %',
            quote_literal(v_id) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF omniq_add_task.max_retries IS NULL OR omniq_add_task.max_retries NOT BETWEEN 0 AND 10000
       OR omniq_add_task.retry_delay IS NULL OR NOT omniq_add_task.retry_delay >= 0
       OR omniq_add_task.priority IS NULL
       OR NOT coalesce(omniq_add_task.timeout > 0, true)
       OR NOT coalesce(omniq_add_task.result_ttl > 0, true) THEN
        RAISE EXCEPTION 'priority is required, max_retries must be 0-10000, retry_delay >= 0, timeout and result_ttl > 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT e.existing_id INTO v_existing FROM omniq_enqueue_v2(jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
        'unique_key', omniq_add_task.unique_key,
        'unique_states', to_jsonb(omniq_add_task.unique_states),
        'unique_window', extract(epoch FROM omniq_add_task.unique_window),
        'unique_mode', omniq_add_task.unique_mode)) || jsonb_build_object(
        'id', v_id,
        'func', omniq_add_task.func,
        'args', omniq_add_task.args,
        'kwargs', omniq_add_task.kwargs,
        'queue_name', omniq_add_task.queue_name,
        'priority', omniq_add_task.priority,
        'run_at', omniq_add_task.run_at,
        'expires_at', omniq_add_task.expires_at,
        'max_retries', omniq_add_task.max_retries,
        'retry_delay', omniq_add_task.retry_delay,
        'dependencies', to_jsonb(coalesce(omniq_add_task.dependencies, '{}')),
        'callbacks', coalesce(omniq_add_task.callbacks, '{}'),
        'metadata', coalesce(omniq_add_task.metadata, '{}'),
        'task_data', jsonb_strip_nulls(jsonb_build_object(
            'timeout', omniq_add_task.timeout, 'result_ttl', omniq_add_task.result_ttl)))))
        AS e WHERE e.existing_id IS NOT NULL;
    RETURN coalesce(v_existing, v_id);
END
$$;
