-- Migration 0005: the database enforces what the Python models validate (issue 9, defect 6).
--
-- psql users and other languages bypass Python. omniq_enqueue accepted 400-character ids;
-- the worker's model refused the row when it read it back, and every worker of that queue
-- exited. Tasks enter the table only through omniq_insert_tasks (every role but the owner
-- writes through the functions), which refuses bad ids and queue names itself: a CHECK
-- constraint re-prepares its expression for every INSERT statement, which cost a single
-- enqueue a fifth of its time. Schedules are written by people, rarely, and directly
-- (save_schedule, psql): they get CHECK constraints.
--   schedules_id_check          1-200 characters like a task id, no whitespace, commas or
--                               control characters (a fired task's id is the schedule id,
--                               '@' and the due time, itself a valid task id of at most 255)
--   schedules_queue_name_check  1-200 characters, not blank, no control characters
--   schedules_func_check        an import path: package.module.function or
--                               package.module:Class.method (identifiers of ASCII letters,
--                               digits and _, or any non-ASCII character)
--
-- Each constraint is added NOT VALID (instant: existing rows are not read; new and updated
-- rows are checked) and validated at once when the table holds at most 100,000 rows. On a
-- bigger table a DBA validates later, without blocking writes:
--   ALTER TABLE schedules VALIDATE CONSTRAINT schedules_id_check;   -- and so on
-- omniq_check_invariants() reports constraints left unvalidated, and rows of either table
-- outside the rules. Each constraint is dropped (IF EXISTS) before it is added, so the file
-- can be re-run.

-- name: migration_0005#
ALTER TABLE "schedules"
    DROP CONSTRAINT IF EXISTS schedules_id_check,
    ADD CONSTRAINT schedules_id_check CHECK (length(id) BETWEEN 1 AND 200
        AND id !~ '[\s,\x01-\x1f\x7f]') NOT VALID,
    DROP CONSTRAINT IF EXISTS schedules_queue_name_check,
    ADD CONSTRAINT schedules_queue_name_check CHECK (length(queue_name) <= 200 AND queue_name ~ '\S' AND queue_name !~ '[\x01-\x1f\x7f]') NOT VALID,
    DROP CONSTRAINT IF EXISTS schedules_func_check,
    ADD CONSTRAINT schedules_func_check CHECK (func ~ '^[A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_\u0080-\U0010FFFF]*(\.[A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_\u0080-\U0010FFFF]*)*[.:][A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_\u0080-\U0010FFFF]*(\.[A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_\u0080-\U0010FFFF]*)*$') NOT VALID;

-- Validate at once where that is quick (a fresh or small installation).
DO $validate$
BEGIN
    IF (SELECT count(*) FROM (SELECT 1 FROM "schedules" LIMIT 100001) AS s) <= 100000 THEN
        ALTER TABLE "schedules" VALIDATE CONSTRAINT schedules_id_check,
            VALIDATE CONSTRAINT schedules_queue_name_check, VALIDATE CONSTRAINT schedules_func_check;
    END IF;
END
$validate$;
