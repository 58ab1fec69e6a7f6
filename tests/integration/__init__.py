"""Tests against a real PostgreSQL, in this process: the backend, its SQL and its plans."""
