"""What the tests share besides fixtures: database helpers (``db``), real ``omniq`` processes
(``processes``), and the task functions those processes import (``jobs``, ``fault_jobs``,
``chaos_jobs``, as ``tests.support.jobs.<name>``: worker processes start in the repository root)."""
