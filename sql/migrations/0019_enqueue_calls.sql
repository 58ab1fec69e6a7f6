-- Migration 0019: calls of one function as typed arrays: omniq_enqueue_calls_v1 (issue 12).
--
-- enqueue_calls() of a template without dependencies (a fan-out of one function) calls
-- omniq_enqueue_calls_v1 (sql/functions/tasks.sql): the template's shared columns as one small
-- JSON object, the ids and creation times as typed arrays, and the calls' arguments as one
-- JSON array of arrays (positional) or objects (keyword). omniq_enqueue_v2 took one JSON
-- document per task, each repeating the template, which the server parsed and unpacked row
-- by row and the client built and serialised call by call. 10,000 calls, one client, durable,
-- medians of 7 alternating runs (2026-12-03): 167 ms through omniq_enqueue_v2, 138 ms through
-- omniq_enqueue_calls_v1. Templates with dependencies, enqueue_many and unique keys keep going
-- through omniq_enqueue_v2, which processes of the previous release also call.
-- Functions only; no table is touched.
--
-- lock: none

-- name: migration_0019#
SELECT 1;
