-- Migration 0013: which OmniQ version each worker runs (issue 14: the dashboard's Workers table
-- and `omniq status` show it, so a rolling deploy can be watched worker by worker).
--
-- omniq_heartbeat_v2 (sql/functions/workers.sql) records it; omniq_heartbeat_v1, which the
-- previous release's workers still call during a rolling deploy, leaves it NULL ("unknown").
-- A nullable column without a default: adding it is instant (a brief lock on the small
-- worker registry).
--
-- lock: omniq_workers ACCESS EXCLUSIVE

-- name: migration_0013#
ALTER TABLE omniq_workers ADD COLUMN IF NOT EXISTS version TEXT;
