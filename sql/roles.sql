-- OmniQ's least-privilege roles, applied by a DBA with psql after `omniq migrate`:
--
--   psql "$DSN" -v schema=public -f sql/roles.sql
--
-- omniq_producer  enqueues (omniq_enqueue[_vN], omniq_enqueue_one_v1, omniq_enqueue_calls_v1,
--                 omniq_add_task) and reads results; by default it also reads tasks and
--                 events, of every queue (see producer_reads_tasks).
-- omniq_worker    runs tasks: dequeue, finish, release, heartbeat, rescue, fire schedules.
-- omniq_admin     owns the installation: migrations, maintenance, schedules, everything.
--
-- These are group roles (NOLOGIN): grant them to login users, for example
--   CREATE ROLE billing_app LOGIN PASSWORD '...' IN ROLE omniq_producer;
--   CREATE ROLE dba_alice LOGIN PASSWORD '...' IN ROLE omniq_admin;
--   ALTER ROLE dba_alice SET role = 'omniq_admin';  -- objects it creates belong to omniq_admin
--
-- Variables (psql -v name=value), all optional:
--   schema                the OmniQ schema (default public)
--   producer_role, worker_role, admin_role   role names (default omniq_producer, ...);
--                         use other names for a second installation in another schema
--   producer_reads_tasks  on (default): producers read tasks, results and events of every
--                         queue, arguments included; off: results only, no task arguments
--
-- Run it as a superuser (it creates roles and hands the installation's objects to the admin
-- role). It is idempotent: run it again after every upgrade, so that objects a migration
-- added are owned by the admin role and granted. Table names are read from the installation
-- (omniq_meta), so renamed tables need no variable. See sql/README.md, "Least privilege".

\set ON_ERROR_STOP on
\set QUIET on
\if :{?schema}
\else
    \set schema public
\endif
\if :{?producer_role}
\else
    \set producer_role omniq_producer
\endif
\if :{?worker_role}
\else
    \set worker_role omniq_worker
\endif
\if :{?admin_role}
\else
    \set admin_role omniq_admin
\endif
\if :{?producer_reads_tasks}
\else
    \set producer_reads_tasks on
\endif

BEGIN;

SELECT to_regclass(format('%I.omniq_meta', :'schema')) IS NOT NULL AS omniq_installed \gset
\if :omniq_installed
\else
    \warn 'roles.sql: schema' :schema 'holds no OmniQ installation; run omniq migrate first'
    DO $$ BEGIN RAISE EXCEPTION 'roles.sql: no OmniQ installation in this schema'; END $$;
\endif

-- The four configurable table names, as the installation recorded them.
SELECT split_part(value, ',', 1) AS tasks_table, split_part(value, ',', 2) AS results_table,
       split_part(value, ',', 3) AS events_table, split_part(value, ',', 4) AS schedules_table
FROM :"schema".omniq_meta WHERE key = 'tables' \gset

-- The three group roles, when missing.
SELECT format('CREATE ROLE %I NOLOGIN', r)
FROM unnest(ARRAY[:'producer_role', :'worker_role', :'admin_role']) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec

-- omniq_admin owns every OmniQ object: migrations need ownership (CREATE INDEX, CREATE OR
-- REPLACE FUNCTION), and SECURITY DEFINER omniq_enqueue then runs as omniq_admin, not as
-- whoever installed OmniQ (often a superuser).
SELECT format('ALTER TABLE %I.%I OWNER TO %I', :'schema', t, :'admin_role')
FROM unnest(ARRAY[:'tasks_table', :'results_table', :'events_table', :'schedules_table',
                  'omniq_workers', 'omniq_migrations', 'omniq_meta', 'omniq_queues']) AS t \gexec
SELECT format('ALTER %s %I.%I OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'SEQUENCE' END,
              :'schema', c.relname, :'admin_role')
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = :'schema' AND c.relkind IN ('v', 'S') AND c.relname LIKE 'omniq\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d  -- a sequence OWNED BY a column follows its table
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'a') \gexec
SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, :'admin_role')
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = :'schema' AND p.proname LIKE 'omniq\_%' \gexec
GRANT USAGE, CREATE ON SCHEMA :"schema" TO :"admin_role";

-- No OmniQ function is callable by PUBLIC: each role gets exactly the ones it needs.
SELECT format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', p.oid::regprocedure)
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = :'schema' AND p.proname LIKE 'omniq\_%' \gexec

-- Routines granted by an earlier version of this script that the roles no longer need.
SELECT format('REVOKE ALL ON ROUTINE %s FROM %I', p.oid::regprocedure, r)
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
CROSS JOIN unnest(ARRAY[:'producer_role', :'worker_role']) AS r
WHERE n.nspname = :'schema' AND p.proname LIKE 'omniq\_%' \gexec
GRANT USAGE ON SCHEMA :"schema" TO :"producer_role", :"worker_role";
-- Every client checks the schema version when it connects.
GRANT SELECT ON :"schema".omniq_migrations, :"schema".omniq_meta
    TO :"producer_role", :"worker_role";

-- omniq_producer: enqueue through the functions (omniq_enqueue, its versions,
-- omniq_enqueue_one_v1 and omniq_enqueue_calls_v1 are SECURITY DEFINER, so no write
-- privilege on any table is needed), wait for and read results.
-- Every protocol version of a function is granted (_v1, _v2, ...): processes of the releases
-- a rolling deploy runs side by side each call their own.
SELECT format('GRANT EXECUTE ON ROUTINE %s TO %I', p.oid::regprocedure, :'producer_role')
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = :'schema'
  AND p.proname ~ '^omniq_(enqueue|enqueue_one|enqueue_calls|add_task|new_id|channel)(_v[0-9]+)?$' \gexec
GRANT SELECT ON :"schema".:"results_table" TO :"producer_role";
\if :producer_reads_tasks
    GRANT SELECT ON :"schema".:"tasks_table", :"schema".:"events_table" TO :"producer_role";
\else
    REVOKE ALL ON :"schema".:"tasks_table", :"schema".:"events_table" FROM :"producer_role";
\endif

-- omniq_worker: run tasks and fire schedules, only through the protocol functions (all
-- SECURITY DEFINER, search_path pinned): it reads tables and writes none, so a compromised
-- worker host cannot rewrite other tasks (their func, their arguments) or forge results.
-- Privileges granted by earlier versions of this script are taken back first.
REVOKE ALL ON :"schema".:"tasks_table", :"schema".:"results_table", :"schema".:"events_table",
    :"schema".:"schedules_table", :"schema".omniq_workers, :"schema".omniq_queues
    FROM :"worker_role";
SELECT format('REVOKE ALL ON SEQUENCE %I.%I FROM %I', :'schema', c.relname, :'worker_role')
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = :'schema' AND c.relkind = 'S' AND c.relname LIKE 'omniq\_%' \gexec
SELECT format('GRANT EXECUTE ON ROUTINE %s TO %I', p.oid::regprocedure, :'worker_role')
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = :'schema'
  AND p.proname ~ ('^omniq_(dequeue|finish_tasks|release_tasks|heartbeat|worker_stopped'
                   '|rescue_tasks|claim_schedules|fire_schedules|enqueue|enqueue_one'
                   '|enqueue_calls|add_task|new_id'
                   '|channel)(_v[0-9]+)?$') \gexec
GRANT SELECT ON :"schema".:"tasks_table", :"schema".:"results_table",
    :"schema".:"schedules_table", :"schema".omniq_workers TO :"worker_role";
-- Queue settings (pause, limits): a worker reads them to know when a rate-limited queue's next
-- task may start (next_due_at); it changes none. Pausing and limits are the admin's.
GRANT SELECT ON :"schema".omniq_queues TO :"worker_role";

COMMIT;

\echo 'roles.sql: OmniQ in schema' :schema 'is owned by' :admin_role 'and granted to' :producer_role '(reads tasks:' :producer_reads_tasks ') and' :worker_role
