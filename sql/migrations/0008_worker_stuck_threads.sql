-- Migration 0008: omniq_workers.stuck_threads, the number of a worker's threads still running
-- task functions that were given up (timed out, or taken from the worker). Python cannot
-- interrupt a thread: until the function returns, its slot stays busy, and `omniq status`
-- shows the count so an operator sees why a worker takes less work.
--
-- omniq_heartbeat gains the parameter that carries the count: its old signature is dropped
-- here, and sql/functions/workers.sql creates the new one.

-- name: migration_0008#
ALTER TABLE omniq_workers ADD COLUMN IF NOT EXISTS stuck_threads INTEGER NOT NULL DEFAULT 0;
DROP FUNCTION IF EXISTS omniq_heartbeat(TEXT, TEXT, INTEGER, TEXT[], INTEGER, TEXT[], INTERVAL);
