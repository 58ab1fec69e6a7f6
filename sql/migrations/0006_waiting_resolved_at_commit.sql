-- Migration 0006: dependencies resolved at commit, and the scheduler protocol's new fire
-- function (issue 9, defects 1 and 4).
--
-- A task enqueued with dependencies inside the caller's open transaction was resolved only at
-- insert time. A worker finishing a dependency meanwhile could not see the uncommitted task, so
-- after the caller's commit it waited for a dependency that had already completed, forever.
-- tasks_waiting_committed is a DEFERRABLE INITIALLY DEFERRED constraint trigger: at the commit
-- of the transaction that wrote a waiting task, it locks the task's dependencies FOR SHARE and
-- resolves the task again (omniq_resolve_committed, in functions/tasks.sql). A worker ending a
-- dependency holds that row's lock until it commits, so one of the two always sees the other:
-- either the trigger waits for the worker's commit and reads the final status, or the worker
-- waits for the caller's commit and then finds the new waiting task among the dependents.
--
-- omniq_fire_schedules now takes the errors Python met and returns one row per schedule
-- (schedule_id, task_id, error); the old signature is dropped (functions/schedules.sql
-- creates the new one). Run sql/roles.sql again after upgrading: grants on it are re-made.

-- name: migration_0006#
-- The trigger's body is in functions/tasks.sql (omniq_resolve_committed), re-applied with it.
CREATE OR REPLACE FUNCTION omniq_waiting_committed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = "public", pg_temp AS $$
BEGIN
    PERFORM omniq_resolve_committed(NEW.id);
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION omniq_waiting_committed() FROM PUBLIC;

DROP TRIGGER IF EXISTS tasks_waiting_committed ON "tasks";
CREATE CONSTRAINT TRIGGER tasks_waiting_committed
    AFTER INSERT OR UPDATE OF status, dependencies ON "tasks"
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.status = 'waiting')
    EXECUTE FUNCTION omniq_waiting_committed();

DROP FUNCTION IF EXISTS omniq_fire_schedules(TEXT[], TIMESTAMPTZ[]);
