-- Migration 0020: omniq_enqueue_calls_v1 takes "dependencies": [] and "unique_key": null in
-- its template as what they say, none (issue 12).
--
-- Migration 0019's function refused a template holding either key at all, so a psql caller
-- who spelt out "no dependencies" the way omniq_enqueue accepts it was told to go elsewhere.
-- A non-empty list, or any unique key, is still refused with the same message and hint.
-- Functions only; no table is touched.
--
-- lock: none

-- name: migration_0020#
SELECT 1;
