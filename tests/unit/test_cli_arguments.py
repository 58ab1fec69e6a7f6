"""The command line's arguments: bad values are refused with exit code 2 and argparse's message,
before anything connects (run in this process; no database needed)."""

from __future__ import annotations

import pytest

from omniq.cli import main

USAGE_ERRORS = [
    (["enqueue", "f.g", "--kwargs", "[1]"], "expected a JSON object"),
    (["enqueue", "f.g", "--delay", "5", "--at", "2030-01-01"], "not allowed with argument"),
    (["enqueue", "f.g", "--at", "tomorrow"], "ISO 8601"),
    (["enqueue", "f.g", "--delay", "soon"], "duration like 90s"),
    (["tasks", "--status", "broken"], "expected one or more of pending, waiting"),
    (["tasks", "--since", "yesterday"], "or a duration ago"),
    (["events", "--type", "exploded"], "expected one or more of enqueued"),
    (["results", "--limit", "-5"], "expected a whole number, 0 or more"),
    (["retry"], "give task IDS, --queue, --func, or --all"),
    (["retry", "some-id", "--all"], "--all retries every failed task"),
    (["cancel"], "the following arguments are required: IDS"),
    (["schedule", "add", "f.g"], "one of the arguments --cron --every --at is required"),
    (["schedule", "add", "f.g", "--every", "0"], "must be positive"),
    (["schedule", "pause"], "the following arguments are required: ID"),
    (["cleanup", "--events-older-than", "x"], "expected a number of days"),
    (["status", "--watch", "-1"], "argument --watch"),
    (["nonsense"], "invalid choice"),
    # issue 10, defect 9: each was accepted, then spun at 99% CPU or failed every task
    (["worker", "--heartbeat", "0"], "argument --heartbeat: must be positive"),
    (["worker", "--heartbeat", "nan"], "argument --heartbeat: must be positive"),
    (["worker", "--task-timeout", "-1"], "argument --task-timeout: must be positive"),
    (["worker", "--concurrency", "0"], "argument --concurrency: must be positive"),
    (["worker", "--worker-timeout", "0"], "argument --worker-timeout: must be positive"),
    (["worker", "--shutdown-grace", "-2"], "argument --shutdown-grace: expected seconds"),
]


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bad arguments are refused before anything connects: checked in this process (fast).
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("usage: omniq") and message in err
