-- Queue settings (issue 13): pause and resume a queue, cap its running tasks (max_running), cap
-- the rate at which its tasks start (rate per second, burst), and the helpers
-- omniq_dequeue_v1 calls to enforce them (sql/functions/tasks.sql). The settings live in
-- omniq_queues (migration 0011); a queue without a row has no limit and is not paused.
-- psql API: omniq_pause_queue('name'), omniq_resume_queue('name'),
-- omniq_set_queue_limits('name', max_running => 2, rate => 5, burst => 10); read them with
-- SELECT * FROM omniq_queue_settings() (counts of running and pending tasks included).
-- Python calls the _v1 functions. Every entry point is SECURITY DEFINER with a pinned
-- search_path and not executable by PUBLIC: the admin role owns them (sql/roles.sql).
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_queues#
CREATE OR REPLACE FUNCTION omniq_check_queue_name(p_name TEXT) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE AS $$
-- p_name when it is a valid queue name (what the Python model accepts), else the error.
BEGIN
    IF p_name IS NULL OR NOT omniq_valid_queue_name(p_name) THEN
        PERFORM omniq_refuse_queue_name(coalesce(p_name, 'NULL'));
    END IF;
    RETURN p_name;
END
$$;

CREATE OR REPLACE FUNCTION omniq_pause_queue_v1(p_name TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Pause a queue: it keeps accepting tasks, no worker takes any (omniq_dequeue_v1 skips it),
-- tasks already running finish. A queue never named before gets its row now. Returns
-- whether this call paused it (false: it was paused already; of two racing calls, one says
-- true). Index: omniq_queues_pkey.
DECLARE
    v_done BOOLEAN;
BEGIN
    INSERT INTO omniq_queues AS q (name, paused) VALUES (omniq_check_queue_name(p_name), true)
    ON CONFLICT (name) DO UPDATE SET paused = true, updated_at = now() WHERE NOT q.paused
    RETURNING true INTO v_done;
    RETURN coalesce(v_done, false);
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_pause_queue_v1(TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_resume_queue_v1(p_name TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Resume a paused queue and wake its workers (NOTIFY on the queue's channel, sent at commit).
-- Returns whether this call resumed it (false: it was not paused; of two racing calls, one
-- says true). Limits stay as they are. Index: omniq_queues_pkey.
DECLARE
    v_done BOOLEAN;
BEGIN
    UPDATE omniq_queues AS q SET paused = false, updated_at = now()
    WHERE q.name = omniq_check_queue_name(p_name) AND q.paused
    RETURNING true INTO v_done;
    IF v_done THEN
        PERFORM pg_notify(omniq_channel('tasks'), p_name);
    END IF;
    RETURN coalesce(v_done, false);
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_resume_queue_v1(TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_set_queue_limits_v1(p_name TEXT, p_max_running INTEGER,
    p_rate REAL, p_burst INTEGER) RETURNS VOID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- Set a queue's limits, all three at once: NULL removes that limit. max_running caps the
-- queue's running tasks across all workers (0 pauses the queue, 1 runs its tasks one at a
-- time); rate caps how many of its tasks start per second, with up to burst at once (default:
-- one second's worth, at least 1); the bucket starts full. Pausing is separate and kept.
-- Wakes the queue's workers: a raised limit may let them go on. Index: omniq_queues_pkey.
BEGIN
    PERFORM omniq_check_queue_name(p_name);
    IF p_max_running < 0 OR p_rate <= 0 OR p_rate = 'Infinity' OR p_rate = 'NaN'
       OR p_burst < 1 OR (p_burst IS NOT NULL AND p_rate IS NULL) THEN
        RAISE EXCEPTION 'invalid limits for queue %: max_running %, rate %, burst %',
            quote_literal(p_name), coalesce(p_max_running::text, 'none'),
            coalesce(p_rate::text, 'none'), coalesce(p_burst::text, 'none')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'max_running must be 0 or more (0 pauses the queue), rate a positive '
                         'number of tasks per second, burst 1 or more and only with a rate; '
                         'leave a limit out (NULL) to remove it.';
    END IF;
    p_burst := CASE WHEN p_rate IS NOT NULL THEN coalesce(p_burst, greatest(1, ceil(p_rate)::integer)) END;
    INSERT INTO omniq_queues AS q (name, max_running, rate, burst, tokens, refilled_at)
    VALUES (p_name, p_max_running, p_rate, p_burst, coalesce(p_burst, 0), clock_timestamp())
    ON CONFLICT (name) DO UPDATE
    SET max_running = excluded.max_running, rate = excluded.rate, burst = excluded.burst,
        tokens = CASE WHEN q.rate IS NOT DISTINCT FROM excluded.rate
                       AND q.burst IS NOT DISTINCT FROM excluded.burst
                      THEN least(q.tokens, coalesce(excluded.burst, 0))
                      ELSE coalesce(excluded.burst, 0) END,
        refilled_at = CASE WHEN q.rate IS NOT DISTINCT FROM excluded.rate
                            AND q.burst IS NOT DISTINCT FROM excluded.burst
                           THEN q.refilled_at ELSE excluded.refilled_at END,
        updated_at = now();
    PERFORM pg_notify(omniq_channel('tasks'), p_name);
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_set_queue_limits_v1(TEXT, INTEGER, REAL, INTEGER) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_queue_settings_v1(p_names TEXT[] DEFAULT NULL)
RETURNS TABLE (name TEXT, paused BOOLEAN, max_running INTEGER, rate REAL, burst INTEGER,
    tokens REAL, running BIGINT, pending BIGINT, updated_at TIMESTAMPTZ)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = "public", pg_temp AS $$
-- The settings of the named queues (all queues with a row when p_names is NULL), by name,
-- with the tokens the bucket holds now and the queue's running and pending task counts.
-- Index: omniq_queues_pkey; tasks_running_queue_idx and tasks_pending_idx for the counts.
-- PL/pgSQL (its body is checked when first run, not when created), as are the other functions
-- that read omniq_queues: a function file is applied at every step of an upgrade, also before
-- migration 0011 creates the table.
BEGIN
    RETURN QUERY
    SELECT q.name, q.paused, q.max_running, q.rate, q.burst,
           CASE WHEN q.rate IS NOT NULL THEN least(q.burst::real, (q.tokens + q.rate
                * greatest(0, extract(epoch FROM clock_timestamp() - q.refilled_at)))::real) END,
           (SELECT count(*) FROM "tasks" AS t WHERE t.status = 'running' AND t.queue_name = q.name),
           (SELECT count(*) FROM "tasks" AS t WHERE t.status = 'pending' AND t.queue_name = q.name),
           q.updated_at
    FROM omniq_queues AS q
    WHERE p_names IS NULL OR q.name = ANY (p_names)
    ORDER BY q.name;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_queue_settings_v1(TEXT[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_queue_allowance(p_queue TEXT, p_want INTEGER) RETURNS INTEGER
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- How many tasks a dequeue may take from a limited queue now (its row locked by
-- omniq_dequeue_v1 until commit): 0 when paused or max_running is 0; at most max_running minus
-- the tasks running (read after the lock, so committed dequeues are counted); at most the
-- whole tokens in the bucket, refilled for the time elapsed (the refill is stored).
-- Index: omniq_queues_pkey; tasks_running_queue_idx for the count.
DECLARE
    v_q RECORD;
    v_now TIMESTAMPTZ := clock_timestamp();
    v_allow INTEGER := p_want;
    v_running INTEGER;
    v_tokens DOUBLE PRECISION;
BEGIN
    SELECT q.paused, q.max_running, q.rate, q.burst, q.tokens, q.refilled_at INTO v_q
    FROM omniq_queues AS q WHERE q.name = p_queue;
    IF NOT FOUND THEN
        RETURN p_want;
    END IF;
    IF v_q.paused OR v_q.max_running = 0 THEN
        RETURN 0;
    END IF;
    IF v_q.max_running IS NOT NULL THEN
        SELECT count(*) INTO v_running FROM "tasks" AS t
        WHERE t.status = 'running' AND t.queue_name = p_queue;
        v_allow := least(v_allow, v_q.max_running - v_running);
    END IF;
    IF v_q.rate IS NOT NULL THEN
        v_tokens := least(v_q.burst, v_q.tokens
            + v_q.rate * greatest(0, extract(epoch FROM v_now - v_q.refilled_at)));
        UPDATE omniq_queues AS q SET tokens = v_tokens, refilled_at = v_now
        WHERE q.name = p_queue;
        v_allow := least(v_allow, floor(v_tokens)::integer);
    END IF;
    RETURN greatest(v_allow, 0);
END
$$;

CREATE OR REPLACE FUNCTION omniq_queue_took(p_queue TEXT, p_taken INTEGER) RETURNS VOID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- After a dequeue took p_taken tasks from a limited queue: spend that many tokens of its rate
-- bucket (if it has one). Index: omniq_queues_pkey.
BEGIN
    UPDATE omniq_queues AS q SET tokens = greatest(0, q.tokens - p_taken)
    WHERE q.name = p_queue AND q.rate IS NOT NULL AND p_taken > 0;
END
$$;

CREATE OR REPLACE FUNCTION omniq_notify_slot_freed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Trigger tasks_slot_freed (migration 0011), per task that stops running: when its queue has
-- max_running, wake the queue's workers, one of which may now take a task. Identical
-- notifications in one transaction are folded into one by PostgreSQL. Index: omniq_queues_pkey.
BEGIN
    IF EXISTS (SELECT 1 FROM omniq_queues AS q
               WHERE q.name = NEW.queue_name AND q.max_running IS NOT NULL) THEN
        PERFORM pg_notify(omniq_channel_of('tasks', TG_TABLE_SCHEMA), NEW.queue_name);
    END IF;
    RETURN NULL;
END
$$;

-- The psql API's stable names (same arguments and results as the _v1 functions).
CREATE OR REPLACE FUNCTION omniq_pause_queue(name TEXT) RETURNS BOOLEAN
LANGUAGE sql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
    SELECT omniq_pause_queue_v1(name)
$$;
REVOKE EXECUTE ON FUNCTION omniq_pause_queue(TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_resume_queue(name TEXT) RETURNS BOOLEAN
LANGUAGE sql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
    SELECT omniq_resume_queue_v1(name)
$$;
REVOKE EXECUTE ON FUNCTION omniq_resume_queue(TEXT) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_set_queue_limits(name TEXT, max_running INTEGER DEFAULT NULL,
    rate REAL DEFAULT NULL, burst INTEGER DEFAULT NULL) RETURNS VOID
LANGUAGE sql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
    SELECT omniq_set_queue_limits_v1(name, max_running, rate, burst)
$$;
REVOKE EXECUTE ON FUNCTION omniq_set_queue_limits(TEXT, INTEGER, REAL, INTEGER) FROM PUBLIC;

CREATE OR REPLACE FUNCTION omniq_queue_settings(names TEXT[] DEFAULT NULL)
RETURNS TABLE (name TEXT, paused BOOLEAN, max_running INTEGER, rate REAL, burst INTEGER,
    tokens REAL, running BIGINT, pending BIGINT, updated_at TIMESTAMPTZ)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = "public", pg_temp AS $$
    SELECT s.name, s.paused, s.max_running, s.rate, s.burst, s.tokens, s.running, s.pending,
           s.updated_at
    FROM omniq_queue_settings_v1(names) AS s
$$;
REVOKE EXECUTE ON FUNCTION omniq_queue_settings(TEXT[]) FROM PUBLIC;
