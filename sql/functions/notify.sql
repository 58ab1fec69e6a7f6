-- The bodies of two triggers that send NOTIFY wake-ups (the triggers themselves, and the
-- other trigger functions, are in migration 0001): workers on the 'tasks' channel when a task
-- becomes pending again, result waiters on 'results'. They replace the first versions of
-- migration 0001 (same names), so these are the ones that run.
-- Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_notify#
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
    PERFORM pg_notify(omniq_channel('tasks'), NEW.queue_name);
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
    PERFORM pg_notify(omniq_channel('results'), string_agg(r.task_id, ','))
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
