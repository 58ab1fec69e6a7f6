-- Migration 0015: cheaper wake-ups and SQL-side ids (issue 12).
--
-- The changes are in the function files. In notify.sql and queues.sql, the trigger functions that
-- send NOTIFY name their channel with omniq_channel_of(kind, TG_TABLE_SCHEMA), an IMMUTABLE SQL
-- function the planner inlines. They called omniq_channel(kind), whose SET clause keeps it from
-- being inlined or its plan cached: one enqueue spent 65 us of its 540 there. The channel names are
-- unchanged (omniq_channel computes them the same way), so processes of the previous release keep
-- waking and being woken. In sqlapi.sql, omniq_new_id() (the ids of tasks enqueued from SQL without
-- one) lost its SET clause and became one expression, so it is inlined too: 10,000 ids took 56 ms
-- and take 18 ms. Nothing in the tables changes.
--
-- lock: none

-- name: migration_0015#
SELECT 1;
