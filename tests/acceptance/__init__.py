"""Tests of what users run: the omniq CLI, worker and scheduler processes, the dashboard (HTTP
and Chromium), the specification's examples, faults and failover."""
