"""procrastinate side of scripts/bench.py; runs with the peers' virtualenv python.

    python procrastinate_driver.py install | enqueue-single N | enqueue-batch N | fill N
    python procrastinate_driver.py latency N INTERVAL
    procrastinate --app procrastinate_driver.app worker --concurrency 10 [--one-shot]
        (the worker; PYTHONPATH=this directory)

$BENCH_DSN names the database. Commands print one JSON line. The ``stamp`` task appends
"<enqueued_at> <started_at>" to $BENCH_STAMP_FILE (procrastinate keeps no task results).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["BENCH_DSN"]))
_stamps: int | None = None


@app.task(name="noop")
async def noop() -> None:
    pass


@app.task(name="stamp")
async def stamp(enqueued_at: float) -> None:
    global _stamps
    started = time.time()
    if _stamps is None:
        path = os.environ.get("BENCH_STAMP_FILE", os.devnull)
        _stamps = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_stamps, f"{enqueued_at!r} {started!r}\n".encode())


async def main(cmd: str, *args: str) -> dict[str, object]:
    async with app.open_async():
        if cmd == "install":
            await app.schema_manager.apply_schema_async()
            return {}
        n = int(args[0])
        t0 = time.perf_counter()
        if cmd == "enqueue-single":
            for _ in range(n):
                await noop.defer_async()
        elif cmd in ("enqueue-batch", "fill"):
            await noop.batch_defer_async(*({} for _ in range(n)))
        elif cmd == "latency":
            for _ in range(n):
                await stamp.defer_async(enqueued_at=time.time())
                await asyncio.sleep(float(args[1]))
        else:
            raise SystemExit(f"unknown command {cmd!r}")
        return {"seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
