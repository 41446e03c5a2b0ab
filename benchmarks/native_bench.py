"""What make_app's wrapper costs: procrastinate's own worker on a plain App against the same
worker on ``make_app``, on no-op jobs, interleaved rounds.

    .venv/bin/python -m benchmarks.native_bench --database postgresql://... [--jobs 2000]

Three ways per round, each on a fresh database: ``plain`` (a plain procrastinate.App, jobs
deferred with ``batch_defer``); ``make_app, plain jobs`` (the same jobs, no cutover_jobs row: one
extra query per job); ``make_app, Router jobs`` (jobs enqueued by the adapter with their
cutover_jobs row: one read and one outcome write per job). Rates are jobs/s of
``run_worker(wait=False)``; ratios are per round.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable, Iterator

import procrastinate
import psycopg
from cutover_procrastinate import ProcrastinateBackend, make_app

from cutover.registry import TaskRegistry

registry = TaskRegistry()  # (procrastinate warns that the App lives in __main__: harmless here)


@registry.task(name="bench.noop")
def noop(n: int) -> None:
    return None


def _database(admin: str) -> Iterator[str]:
    name = f"native_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a generated identifier
    url = admin.rsplit("/", 1)[0] + "/" + name
    try:
        ProcrastinateBackend(url).close()  # procrastinate's schema and the adapter's tables
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _timed(app: procrastinate.App) -> float:
    start = time.perf_counter()
    app.run_worker(wait=False, install_signal_handlers=False, listen_notify=False)
    return time.perf_counter() - start


def _plain(url: str, jobs: int) -> float:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    app.task(name="bench.noop")(noop)
    with app.open():
        app.tasks["bench.noop"].batch_defer(*({"n": i} for i in range(jobs)))
    return jobs / _timed(app)


def _make_app_plain_jobs(url: str, jobs: int) -> float:
    app = make_app(registry, url)
    with app.open():
        app.tasks["bench.noop"].batch_defer(*({"n": i} for i in range(jobs)))
    return jobs / _timed(app)


def _make_app_router_jobs(url: str, jobs: int) -> float:
    backend = ProcrastinateBackend(url)
    try:
        backend.enqueue([registry.make_record("bench.noop", (), {"n": i}) for i in range(jobs)])
    finally:
        backend.close()
    return jobs / _timed(make_app(registry, url))


WAYS: dict[str, Callable[[str, int], float]] = {
    "plain App": _plain, "make_app, plain jobs": _make_app_plain_jobs,
    "make_app, Router jobs": _make_app_router_jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="an admin URL (databases are made)")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    rates: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(opts.rounds):
        for way, run in WAYS.items():
            for url in _database(opts.database):
                rates[way].append(run(url, opts.jobs))
    base = rates["plain App"]
    for way, values in rates.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(f"{way:<24} {statistics.median(values):8.0f} jobs/s  "
              f"x{statistics.median(ratios):.2f} of plain (rounds: "
              + ", ".join(f"{r:.2f}" for r in ratios) + ")")


if __name__ == "__main__":
    main()
