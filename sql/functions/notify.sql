-- The NOTIFY channels and the bodies of the triggers that send wake-ups (the triggers
-- themselves are in migration 0001): workers on the 'tasks' channel when tasks become pending
-- again, result waiters on 'results', schedulers on 'schedules' (new tasks wake workers from
-- omniq_insert_tasks, sql/functions/tasks.sql, since migration 0017). They
-- replace the first versions of migration 0001 (same names), so these are the ones that run.
-- The trigger functions name their channel with omniq_channel_of(kind, TG_TABLE_SCHEMA),
-- which the planner inlines: calling omniq_channel (pinned to its schema by a SET clause,
-- so it is neither inlined nor cached) cost 65 us of every enqueue (migration 0015).
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_notify#
CREATE OR REPLACE FUNCTION omniq_channel_of(p_kind TEXT, p_schema TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
-- The NOTIFY channel for kind ('tasks', 'results', 'schedules' or 'aborts') of the
-- installation in schema p_schema: one per schema, so two installations in one database
-- never wake each other. The same name as omniq_channel (migration 0001) gives for its own
-- schema; omniq_channel keeps its own copy of the formula, so a role granted EXECUTE on it
-- (sql/roles.sql) needs no grant on this one.
    SELECT 'omniq_' || p_kind || '_' || left(md5(p_schema), 12)
$$;

CREATE OR REPLACE FUNCTION omniq_notify_schedules() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Trigger schedules_notify_changed, per statement: schedulers sleep until the earliest
-- next_run, and any change to that wakes them.
BEGIN
    PERFORM pg_notify(omniq_channel_of('schedules', TG_TABLE_SCHEMA), '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION omniq_notify_task_ready() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Trigger tasks_notify_ready, per row that becomes pending again (retry, rescue, release,
-- dependency met): wakes its queue; identical notifications in one transaction are folded
-- into one by PostgreSQL. A retry delayed into the future wakes nobody unless it is now the
-- queue's earliest due time: a sleeping worker wakes at the earliest due time it knows of
-- (next_due_at) and then sees the later ones itself. Index: tasks_delayed_until_idx.
BEGIN
    IF NEW.delayed AND EXISTS (SELECT 1 FROM "tasks" AS t
                               WHERE t.status = 'pending' AND t.delayed
                                 AND t.queue_name = NEW.queue_name
                                 AND t.run_at > now() AND t.run_at < NEW.run_at) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify(omniq_channel_of('tasks', TG_TABLE_SCHEMA), NEW.queue_name);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION omniq_notify_results() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
-- Triggers results_notify_inserted and results_notify_updated, per statement: the ids of the
-- tasks whose result became final, comma-separated, as many per message as fit in 7,000
-- bytes (NOTIFY refuses payloads of 8,000 bytes; an id has at most 255 characters, 1,020
-- bytes). Chunk k holds the ids whose running byte count falls in [6000k, 6000(k+1)).
BEGIN
    PERFORM pg_notify(omniq_channel_of('results', TG_TABLE_SCHEMA), string_agg(r.task_id, ','))
    FROM (SELECT c.task_id,
                 sum(octet_length(c.task_id) + 1) OVER (ROWS UNBOUNDED PRECEDING) / 6000 AS chunk
          FROM changed_results AS c
          WHERE c.status IN ('success', 'failure', 'cancelled', 'expired')) AS r
    GROUP BY r.chunk;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION omniq_channel_v1(p_kind TEXT) RETURNS TEXT
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
-- Protocol version 1 of omniq_channel (migration 0001): the channel a process LISTENs on for
-- 'tasks', 'results' or 'schedules'. The channel names and payloads are part of the contract:
-- every release's processes wake each other.
    SELECT omniq_channel(p_kind)
$$;
