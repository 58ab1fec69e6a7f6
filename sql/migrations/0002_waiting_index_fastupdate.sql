-- Migration 0002: tasks_waiting_idx without the GIN pending list.
--
-- With fastupdate (the GIN default), new entries go to an unsorted pending list that every
-- lookup reads in full until vacuum merges it (up to gin_pending_list_limit, 4 MB). This index
-- is looked up by task id on the hot path: omniq_resolve_dependents after every finished task
-- that others may wait for, and the purge's keep-check once per candidate row. Measured on
-- 1,000 waiting tasks: a lookup read 10 pages instead of 5, and a purge batch of 5,000 rows
-- took 900 ms instead of 53 ms. Only tasks with dependencies enter this partial index, so
-- inserting into it directly costs little.

-- name: migration_0002#
ALTER INDEX tasks_waiting_idx SET (fastupdate = off);
-- Merge what is already pending (fastupdate = off only stops new entries going there).
SELECT gin_clean_pending_list('tasks_waiting_idx'::regclass);
