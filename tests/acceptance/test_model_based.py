"""The model-based concurrency test of issue 9, in the default run: about a minute of random
interleavings (tests/support/chaos.py) with real worker and scheduler processes, SIGKILLs, transactional
graphs that commit or roll back, cancels, a manual worker that falls silent, schedules paused
and resumed; omniq_check_invariants() while it runs and at quiescence, and the model's checks
of every committed task. The seed is printed; replay a failure with
`scripts/chaos --seed <seed>` (or OMNIQ_CHAOS_SEED=<seed> for this test).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.support.chaos import run

pytestmark = pytest.mark.timeout(400)

SECONDS = float(os.environ.get("OMNIQ_CHAOS_SECONDS", "60"))


async def test_random_interleavings_keep_every_invariant(pg_dsn: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("OMNIQ_CHAOS_SEED") or random.randrange(2**31))
    print(f"\nchaos seed={seed} (replay: OMNIQ_CHAOS_SEED={seed}, or scripts/chaos --seed {seed})")
    counts = await run(pg_dsn, SECONDS, seed, tmp_path)
    assert counts.tasks > 100 and counts.kills >= 3 and counts.schedule_fires > 0, counts
    assert counts.invariant_checks >= 10, counts
    assert counts.violations == [], f"seed={seed}: " + "\n".join(counts.violations[:20])
