-- Migration 0007: what each worker last said it holds (issue 9: "no task held by a live worker
-- that is no longer running it", an invariant of omniq_check_invariants).
--
-- omniq_heartbeat records the ids the worker sent (held) and when (held_at). A task running
-- under a live worker, started well before that heartbeat and missing from its list, is held
-- by a worker that does not run it: nobody would ever rescue it while the worker lives.
-- Adding columns with constant defaults is instant.

-- name: migration_0007#
ALTER TABLE omniq_workers
    ADD COLUMN IF NOT EXISTS held TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS held_at TIMESTAMPTZ;
