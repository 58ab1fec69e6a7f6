-- Migration 0005: the database enforces what the Python models validate (issue 9, defect 6).
--
-- psql users and other languages bypass Python, and a row the models refuse to read back
-- stopped every worker of its queue (a 400-character id made the worker exit). These CHECK
-- constraints refuse such rows at the door, whoever writes them:
--   tasks_id_check          1-255 characters, no whitespace, commas or control characters
--   tasks_queue_name_check  1-200 characters, not blank, no control characters
--   tasks_func_check        an import path: package.module.function or package.module:Class.method
--                           (identifiers of ASCII letters, digits and _, or any non-ASCII letter)
--   tasks_numbers_check     max_retries 0-10000, retry_count >= 0, retry_delay >= 0 (not NaN)
--   tasks_json_check        args an array, kwargs an object, dependencies an array, callbacks an
--                           object keyed on_success/on_failure/on_complete, metadata and task_data
--                           objects
--   schedules_id_check      1-200 characters like a task id (a fired task's id is the schedule id,
--                           '@' and the due time, and must itself be a valid task id)
--   schedules_queue_name_check, schedules_func_check   as for tasks
--
-- Each is added NOT VALID (instant: existing rows are not read, new and updated rows are
-- checked) and validated at once when the table holds at most 100,000 rows. On a bigger table
-- a DBA validates later, without blocking writes:
--   ALTER TABLE tasks VALIDATE CONSTRAINT tasks_id_check;   -- and so on
-- omniq_check_invariants() reports constraints left unvalidated. Each constraint is dropped
-- (IF EXISTS) before it is added, so the file can be re-run.

-- name: migration_0005#
ALTER TABLE "tasks"
    DROP CONSTRAINT IF EXISTS tasks_id_check,
    ADD CONSTRAINT tasks_id_check CHECK (length(id) BETWEEN 1 AND 255 AND id !~ '[\s,\x01-\x1f\x7f]') NOT VALID,
    DROP CONSTRAINT IF EXISTS tasks_queue_name_check,
    ADD CONSTRAINT tasks_queue_name_check CHECK (length(queue_name) <= 200 AND queue_name ~ '\S' AND queue_name !~ '[\x01-\x1f\x7f]') NOT VALID,
    DROP CONSTRAINT IF EXISTS tasks_func_check,
    ADD CONSTRAINT tasks_func_check CHECK (func ~ '^[A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_\u0080-\U0010FFFF]*(\.[A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_\u0080-\U0010FFFF]*)*[.:][A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_\u0080-\U0010FFFF]*(\.[A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_\u0080-\U0010FFFF]*)*$') NOT VALID,
    DROP CONSTRAINT IF EXISTS tasks_numbers_check,
    ADD CONSTRAINT tasks_numbers_check CHECK (max_retries BETWEEN 0 AND 10000
        AND retry_count >= 0 AND retry_delay >= 0 AND retry_delay <> 'NaN') NOT VALID,
    DROP CONSTRAINT IF EXISTS tasks_json_check,
    ADD CONSTRAINT tasks_json_check CHECK (jsonb_typeof(args) = 'array'
        AND jsonb_typeof(kwargs) = 'object' AND jsonb_typeof(dependencies) = 'array'
        AND jsonb_typeof(callbacks) = 'object'
        AND callbacks - '{on_success,on_failure,on_complete}'::text[] = '{}'
        AND jsonb_typeof(metadata) = 'object' AND jsonb_typeof(task_data) = 'object') NOT VALID;

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
    IF (SELECT count(*) FROM (SELECT 1 FROM "tasks" LIMIT 100001) AS s) <= 100000 THEN
        ALTER TABLE "tasks" VALIDATE CONSTRAINT tasks_id_check,
            VALIDATE CONSTRAINT tasks_queue_name_check, VALIDATE CONSTRAINT tasks_func_check,
            VALIDATE CONSTRAINT tasks_numbers_check, VALIDATE CONSTRAINT tasks_json_check;
    END IF;
    IF (SELECT count(*) FROM (SELECT 1 FROM "schedules" LIMIT 100001) AS s) <= 100000 THEN
        ALTER TABLE "schedules" VALIDATE CONSTRAINT schedules_id_check,
            VALIDATE CONSTRAINT schedules_queue_name_check, VALIDATE CONSTRAINT schedules_func_check;
    END IF;
END
$validate$;
