-- Migration 0015: cheaper wake-ups (issue 12).
--
-- The change is in sql/functions/notify.sql and queues.sql: the trigger functions that send
-- NOTIFY name their channel with omniq_channel_of(kind, TG_TABLE_SCHEMA), an IMMUTABLE SQL
-- function the planner inlines. They called omniq_channel(kind), whose SET clause keeps it
-- from being inlined or its plan cached: one enqueue spent 65 us of its 540 there. The
-- channel names are unchanged (omniq_channel computes them the same way), so processes of
-- the previous release keep waking and being woken. Nothing in the tables changes.
--
-- lock: none

-- name: migration_0015#
SELECT 1;
