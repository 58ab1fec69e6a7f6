-- Named queries on queue settings (issue 13): pause, resume, limits, loaded by aiosql. Each is
-- a one-line call of a function in sql/functions/queues.sql.

-- name: pause_queue(name)$
-- Pause a queue (creating its row); true when this call paused it. Index: omniq_queues_pkey.
SELECT "public".omniq_pause_queue_v1(:name::text);

-- name: resume_queue(name)$
-- Resume a queue and wake its workers; true when it was paused. Index: omniq_queues_pkey.
SELECT "public".omniq_resume_queue_v1(:name::text);

-- name: set_queue_limits(name, max_running, rate, burst)!
-- Set a queue's max_running, rate and burst (NULL removes one). Index: omniq_queues_pkey.
SELECT "public".omniq_set_queue_limits_v1(:name::text, :max_running::int, :rate::real, :burst::int);

-- name: queue_settings(names)
-- Settings of the named queues (all with a row when NULL), with running and pending counts.
-- Index: omniq_queues_pkey; tasks_running_queue_idx and tasks_pending_idx for the counts.
SELECT name, paused, max_running, rate, burst, tokens, running, pending, updated_at
FROM "public".omniq_queue_settings_v1(:names::text[]);
