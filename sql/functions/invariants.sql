-- omniq_check_invariants(): what must always hold of OmniQ's tables, checked by the database
-- itself. A DBA runs it on production (`SELECT * FROM omniq_check_invariants();`, or
-- `omniq doctor --invariants`); the model-based test and scripts/chaos run it under load.
-- Every check reads through an index and is bounded (p_window, p_limit): see sql/README.md,
-- "Invariants". Re-applied (CREATE OR REPLACE) by `omniq migrate` whenever this file changes.

-- name: functions_invariants#
CREATE OR REPLACE FUNCTION omniq_check_invariants(p_window INTERVAL DEFAULT '1 hour',
    p_limit INTEGER DEFAULT 1000, p_grace INTERVAL DEFAULT '1 minute')
RETURNS TABLE (invariant TEXT, task_id TEXT, schedule_id TEXT, detail TEXT)
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
-- One row per violation, naming the invariant and the task or schedule; no row: all hold.
--   waiting_ready          a waiting task whose dependencies all completed (or that has none)
--   waiting_on_dead        a waiting task with a dependency that failed, expired, was
--                          cancelled or no longer exists
--   final_without_result   a finished task without its result row (results past the task's
--                          result_ttl are cleaned up and not counted)
--   result_mismatch        a finished task whose result says another outcome
--   final_without_event    a finished task without the event of its final status, stored or
--                          derived (a completed task's 'completed' event is derived from its
--                          success result, list_events in sql/queries/events.sql)
--   ended_twice            a finished task with two stored final events since it was last
--                          (re)queued (a worker's success stores none: its single result row
--                          records it)
--   callback_missing       a finished task whose callback (of a kind its status triggers) was
--                          never enqueued; callbacks have one id per task and kind, so none
--                          can be enqueued twice
--   running_on_dead_worker a task running under a worker silent for longer than its
--                          stale_after plus p_grace (an unregistered worker id: 30 s from the
--                          start); the rescue of any live worker should have taken it back
--   held_but_not_running   a task running under a live worker, started more than p_grace
--                          before that worker's last heartbeat, which did not list it: the
--                          worker does not run it, and no rescue takes it back while it lives
--   unique_key_shared      two tasks in their counted states (unique_states) with one unique
--                          key (tasks_unique_key_idx makes it impossible; checked all the same)
--   max_running_exceeded   a queue with more running tasks started since its limits were last
--                          set than its max_running (tasks that started before a limit was
--                          lowered finish and are not counted)
--   tokens_out_of_bounds   a rate-limited queue whose bucket holds less than 0 or more than
--                          burst tokens
--   schedule_next_run      an active schedule without a next_run later than its last_run
--   schedule_fired_twice   one due time of a schedule fired twice
--   invalid_row            a task (among those looked at) or schedule whose id or queue name
--                          the models would refuse (omniq_valid_id, omniq_valid_queue_name)
--   constraint_not_validated  a CHECK constraint of migration 0005 a DBA has yet to VALIDATE
--   abort_not_honoured     a finished task someone asked to abort while it ran
--                          (abort_requested_at) that did not end 'cancelled': once recorded,
--                          the request decides the end (a finish that committed first leaves
--                          no request: omniq_abort_task found the task finished)
-- Bounds: waiting tasks, at most p_limit (tasks_waiting_ids_idx); finished tasks created
-- within p_window or with a final event within p_window, at most p_limit of each
-- (tasks_finished_idx, events_timestamp_idx, results_status_created_idx), each checked by primary key and
-- events_task_idx; running tasks (tasks_running_idx); schedules (small); 'scheduled' events
-- within p_window (events_timestamp_idx).
#variable_conflict use_column
DECLARE
    v_final CONSTANT TEXT[] := '{completed,failed,expired,cancelled}';
    v_recent TEXT[];
BEGIN
    RETURN QUERY
    SELECT CASE WHEN st.dead IS NOT NULL THEN 'waiting_on_dead' ELSE 'waiting_ready' END,
           w.id, NULL::text, coalesce(st.dead, 'its dependencies all completed (or it has none), yet it waits')
    FROM (SELECT t.id FROM "tasks" AS t WHERE t.status = 'waiting'
          ORDER BY t.id LIMIT p_limit) AS k
    JOIN "tasks" AS w ON w.id = k.id
    CROSS JOIN LATERAL omniq_dependencies_state(w.dependencies) AS st
    WHERE w.status = 'waiting' AND (st.ready OR st.dead IS NOT NULL);

    -- Finished tasks to look at: recently created, and recently ended.
    SELECT array_agg(DISTINCT r.id) INTO v_recent FROM (
        (SELECT t.id FROM "tasks" AS t
         WHERE t.status IN ('completed', 'failed', 'cancelled', 'expired')
           AND t.created_at > now() - p_window
         ORDER BY t.status, t.created_at DESC LIMIT p_limit)
        UNION ALL
        (SELECT e.task_id FROM "events" AS e
         WHERE e.timestamp > now() - p_window
           AND e.event_type IN ('completed', 'failed', 'cancelled', 'expired')
         ORDER BY e.timestamp DESC LIMIT p_limit)
        UNION ALL
        (SELECT rr.task_id FROM "results" AS rr
         WHERE rr.status = 'success' AND rr.created_at > now() - p_window
         ORDER BY rr.status, rr.created_at DESC LIMIT p_limit)) AS r;

    RETURN QUERY
    SELECT v.invariant, t.id, NULL::text, v.detail
    FROM "tasks" AS t
    LEFT JOIN "results" AS rs ON rs.task_id = t.id
    CROSS JOIN LATERAL (VALUES
        ('final_without_result',
         CASE WHEN rs.status IS NULL
                   AND NOT coalesce(t.finished_at + make_interval(
                           secs => (t.task_data ->> 'result_ttl')::float8) <= now(), false)
              THEN t.status || ' task has no result row' END),
        ('result_mismatch',
         CASE WHEN rs.status IS DISTINCT FROM CASE t.status WHEN 'completed' THEN 'success'
                                                              WHEN 'failed' THEN 'failure'
                                                              ELSE t.status END
                   AND rs.status IS NOT NULL
              THEN t.status || ' task has a ' || rs.status || ' result' END),
        ('final_without_event',
         CASE WHEN NOT EXISTS (SELECT 1 FROM "events" AS e
                               WHERE e.task_id = t.id AND e.event_type = t.status)
                   -- completed: derived from its success result (a missing or mismatched
                   -- result is final_without_result's or result_mismatch's to report)
                   AND t.status <> 'completed'
              THEN 'no ' || t.status || ' event' END),
        ('ended_twice',
         (SELECT 'final events since it was last queued: ' || string_agg(e.event_type, ', ' ORDER BY e.timestamp)
          FROM "events" AS e
          WHERE e.task_id = t.id AND e.event_type = ANY (v_final)
            AND e.timestamp >= coalesce((SELECT max(q.timestamp) FROM "events" AS q
                                         WHERE q.task_id = t.id AND q.event_type = 'requeued'),
                                        '-infinity')
          HAVING count(*) > 1)),
        ('callback_missing',
         (SELECT 'no ' || string_agg(c.key, ', ') || ' callback task'
          FROM jsonb_each_text(t.callbacks) AS c
          WHERE (c.key = 'on_complete'
                 OR (c.key = 'on_success' AND t.status = 'completed')
                 OR (c.key = 'on_failure' AND t.status IN ('failed', 'expired')))
            AND NOT EXISTS (SELECT 1 FROM "tasks" AS cb WHERE cb.id = omniq_callback_id(t.id, c.key))
          HAVING count(*) > 0))
    ) AS v(invariant, detail)
    WHERE t.id = ANY (v_recent) AND t.status = ANY (v_final) AND v.detail IS NOT NULL;

    RETURN QUERY
    SELECT 'running_on_dead_worker', t.id, NULL::text,
           CASE WHEN w.id IS NULL
                THEN 'running since ' || t.started_at || ' under unregistered worker ' || t.worker_id
                ELSE 'worker ' || w.id || ' silent since ' || w.last_heartbeat
                     || ' (stale after ' || w.stale_after || ')' END
    FROM "tasks" AS t
    LEFT JOIN omniq_workers AS w ON w.id = t.worker_id
    WHERE t.status = 'running' AND t.worker_id IS NOT NULL
      AND CASE WHEN w.id IS NULL THEN t.started_at < now() - interval '30 seconds' - p_grace
               ELSE w.last_heartbeat < now() - w.stale_after - p_grace END;

    RETURN QUERY
    SELECT 'held_but_not_running', t.id, NULL::text,
           'running under live worker ' || w.id || ' since ' || t.started_at
           || ', missing from the tasks it said it holds at ' || w.held_at
    FROM omniq_workers AS w
    JOIN "tasks" AS t ON t.status = 'running' AND t.worker_id = w.id
    WHERE w.last_heartbeat >= now() - w.stale_after AND w.held_at IS NOT NULL
      AND t.started_at < w.held_at - p_grace AND NOT (t.id = ANY (w.held));

    RETURN QUERY
    SELECT 'schedule_next_run', NULL::text, s.id,
           'next_run ' || coalesce(s.next_run::text, 'NULL') || ', last_run '
           || coalesce(s.last_run::text, 'NULL')
    FROM "schedules" AS s
    WHERE s.status = 'active' AND (s.next_run IS NULL OR s.next_run <= s.last_run);

    RETURN QUERY
    SELECT 'schedule_fired_twice', e.task_id, min(e.schedule_id),
           'fired ' || count(*) || ' times'
    FROM "events" AS e
    WHERE e.timestamp > now() - p_window AND e.event_type = 'scheduled'
    GROUP BY e.task_id HAVING count(*) > 1;

    RETURN QUERY
    SELECT 'unique_key_shared', min(t.id), NULL::text,
           count(*) || ' tasks hold unique key ' || quote_literal(left(t.unique_key, 80))
    FROM "tasks" AS t
    WHERE t.unique_key IS NOT NULL AND t.status = ANY (t.unique_states)
    GROUP BY t.unique_key HAVING count(*) > 1
    LIMIT p_limit;

    RETURN QUERY
    SELECT v.invariant, NULL::text, NULL::text, v.detail
    FROM omniq_queues AS q
    CROSS JOIN LATERAL (VALUES
        ('max_running_exceeded',
         (SELECT 'queue ' || quote_literal(q.name) || ': ' || count(*) || ' running tasks started since '
                 || q.updated_at || ', max_running ' || q.max_running
          FROM "tasks" AS t
          WHERE t.status = 'running' AND t.queue_name = q.name AND t.started_at >= q.updated_at
          HAVING count(*) > q.max_running)),
        ('tokens_out_of_bounds',
         CASE WHEN q.rate IS NOT NULL AND NOT q.tokens BETWEEN 0 AND q.burst
              THEN 'queue ' || quote_literal(q.name) || ': ' || q.tokens || ' tokens, burst '
                   || q.burst END)
    ) AS v(invariant, detail)
    WHERE v.detail IS NOT NULL;

    RETURN QUERY
    SELECT 'constraint_not_validated', NULL::text, NULL::text,
           c.conrelid::regclass || ': ' || c.conname
           || ' (ALTER TABLE ... VALIDATE CONSTRAINT checks the older rows without blocking writes)'
    FROM pg_constraint AS c
    WHERE c.conrelid IN (SELECT y.typrelid FROM pg_type AS y
                         WHERE y.oid IN (pg_typeof(NULL::"tasks"), pg_typeof(NULL::"schedules")))
      AND c.contype = 'c' AND NOT c.convalidated;

    RETURN QUERY
    SELECT 'abort_not_honoured', t.id, NULL::text,
           'abort requested by ' || coalesce(t.abort_requested_by, '?') || ' at '
           || t.abort_requested_at || ', yet it ended ' || t.status
    FROM "tasks" AS t
    WHERE t.id = ANY (v_recent) AND t.abort_requested_at IS NOT NULL AND t.status <> 'cancelled';

    RETURN QUERY
    SELECT 'invalid_row', t.id, NULL::text,
           'task id or queue_name outside the rules: ' || left(quote_literal(t.queue_name), 60)
    FROM "tasks" AS t
    WHERE t.id = ANY (v_recent)
      AND NOT (omniq_valid_id(t.id, 255) AND omniq_valid_queue_name(t.queue_name));
    RETURN QUERY
    SELECT 'invalid_row', NULL::text, s.id,
           'schedule id or queue_name outside the rules: ' || left(quote_literal(s.queue_name), 60)
    FROM "schedules" AS s
    WHERE NOT (omniq_valid_id(s.id, 200) AND omniq_valid_queue_name(s.queue_name))
    LIMIT p_limit;
END
$$;

CREATE OR REPLACE FUNCTION omniq_check_invariants_v1(p_window INTERVAL, p_limit INTEGER)
RETURNS TABLE (invariant TEXT, task_id TEXT, schedule_id TEXT, detail TEXT)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
-- Protocol version 1 of omniq_check_invariants (what `omniq doctor --invariants` calls).
    SELECT c.invariant, c.task_id, c.schedule_id, c.detail
    FROM omniq_check_invariants(p_window, p_limit) AS c
$$;
