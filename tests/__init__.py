"""OmniQ's tests, split by what they need (see conftest.py): ``unit`` (no database),
``integration`` (a real PostgreSQL), ``acceptance`` (the CLI, worker processes, the dashboard in
Chromium), ``compat`` (an older release beside this one). Helpers live in ``tests.support``."""
