-- Read-only queries of the omniq command line (status, doctor), loaded by aiosql as files.cli.
-- Every change the CLI makes goes through the same queries and stored functions as Python.

-- name: queue_overview()
-- Per-queue counts and oldest ready age from the omniq_queue_overview view: live tasks and
-- the last hour only. Index: tasks_pending_idx, tasks_running_idx, results_status_created_idx
-- (and the others the view's comment names).
SELECT queue_name, ready, scheduled_later, waiting, running, completed, failed,
       cancelled_or_expired, oldest_ready_age
FROM "public".omniq_queue_overview ORDER BY queue_name;

-- name: recent_outcomes(since)
-- Tasks completed and failed per queue since :since: their results, written when they ended
-- (each task's queue looked up by key; NULL for a task purged since).
-- Index: results_status_created_idx, then tasks_pkey.
SELECT (SELECT t.queue_name FROM "public"."tasks" AS t WHERE t.id = r.task_id) AS queue_name,
       count(*) FILTER (WHERE r.status = 'success') AS completed,
       count(*) FILTER (WHERE r.status = 'failure') AS failed
FROM "public"."results" AS r
WHERE r.status IN ('success', 'failure') AND r.created_at >= :since::timestamptz
GROUP BY 1;

-- name: schedule_overview()^
-- Schedules by status, how many are due now, the earliest next run. Index: none (small table).
SELECT count(*) FILTER (WHERE status = 'active') AS active,
       count(*) FILTER (WHERE status = 'paused') AS paused,
       count(*) FILTER (WHERE status = 'active' AND next_run <= now()) AS due,
       min(next_run) FILTER (WHERE status = 'active') AS next_run
FROM "public"."schedules";

-- name: server_info()^
-- Server version, database, user, and whether autovacuum runs. Index: none (catalog).
SELECT current_setting('server_version') AS version, current_database() AS database,
       current_user AS username, current_setting('autovacuum') = 'on' AS autovacuum,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser;

-- name: privileges(schema_name)^
-- CREATE on the database, and USAGE and CREATE on the schema when it exists. Index: none (catalog).
SELECT has_database_privilege(current_database(), 'CREATE') AS create_database,
       n.oid IS NOT NULL AS schema_exists,
       n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'USAGE') AS usage_schema,
       n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'CREATE') AS create_schema
FROM (SELECT :schema_name::text AS name) AS s
LEFT JOIN pg_namespace AS n ON n.nspname = s.name;

-- name: table_privileges(schema_name, tables)
-- Whether the user may read and write each existing table of :tables. Index: none (catalog).
SELECT c.relname AS name,
       has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')
       AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE') AS read_write
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = :schema_name::text AND c.relname = ANY (:tables::text[]) AND c.relkind = 'r'
ORDER BY c.relname;

-- name: protocol_privileges(schema_name)^
-- Whether the user may call the worker's and the producer's SECURITY DEFINER functions (what
-- the least-privilege roles of sql/roles.sql act through). Index: none (catalog).
SELECT coalesce(bool_and(has_function_privilege(p.oid, 'EXECUTE'))
                    FILTER (WHERE p.proname IN ('omniq_dequeue_v1', 'omniq_finish_tasks_v1')), false) AS worker,
       coalesce(bool_and(has_function_privilege(p.oid, 'EXECUTE'))
                    FILTER (WHERE p.proname = 'omniq_enqueue_v1'), false) AS producer
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = :schema_name::text
  AND p.proname IN ('omniq_dequeue_v1', 'omniq_finish_tasks_v1', 'omniq_enqueue_v1');

-- name: table_health(schema_name, tables)
-- Live and dead rows, vacuums and scans of each table of :tables. Index: none (statistics view).
SELECT relname AS name, n_live_tup AS live, n_dead_tup AS dead, seq_scan,
       coalesce(idx_scan, 0) AS idx_scan, greatest(last_vacuum, last_autovacuum) AS last_vacuum,
       last_autovacuum, pg_total_relation_size(relid) AS bytes
FROM pg_stat_user_tables
WHERE schemaname = :schema_name::text AND relname = ANY (:tables::text[])
ORDER BY relname;

-- name: index_usage(schema_name, tables)
-- Scans and size of every index on the tables of :tables. Index: none (statistics view).
SELECT relname AS table_name, indexrelname AS name, idx_scan AS scans,
       pg_relation_size(indexrelid) AS bytes
FROM pg_stat_user_indexes
WHERE schemaname = :schema_name::text AND relname = ANY (:tables::text[])
ORDER BY relname, indexrelname;

-- name: notify(channel, payload)$
-- Send one NOTIFY (the doctor's LISTEN round trip on a scratch channel). Index: none.
SELECT pg_notify(:channel::text, :payload::text);

-- name: check_invariants(window, limit)
-- Every violated invariant (omniq_check_invariants, sql/functions/invariants.sql): finished
-- tasks looked at are those created or ended within :window, at most :limit of each.
-- Index: tasks_waiting_ids_idx, tasks_finished_idx, events_timestamp_idx, events_task_idx,
-- results_pkey, tasks_pkey, tasks_running_idx.
SELECT invariant, task_id, schedule_id, detail
FROM "public".omniq_check_invariants_v1(:window::interval, :limit::int)
ORDER BY invariant, task_id, schedule_id;
