"""The worker on a deep backlog: ``cutover worker`` against procrastinate's own worker when the
queue already holds thousands of jobs, on tables never analyzed (as right after a drain, or on
any server before autovacuum ran) and analyzed.

    scripts/bench --suite backlog [--rounds 3] [--backlogs 2000,20000]

Each run fills a fresh database with a backlog of no-op jobs, half written through the Router
(jobs with their cutover_jobs row) and half deferred by plain procrastinate code, with
autovacuum off on both tables; "analyzed" runs ANALYZE first. Then one worker (concurrency 1;
cutover: process isolation, the CLI's default) runs the whole backlog in burst: jobs/s from
start to an empty queue. Ways interleaved per round; the ratio is taken per round.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import psycopg

from benchmarks.perf_tasks import registry
from cutover import Call, Router, adapters
from cutover.worker import Worker

NOOP = "benchmarks.perf_tasks.noop"
Rates = dict[str, list[float]]


def fill(url: str, n: int, analyzed: bool, app_factory: Callable[[str], Any]) -> None:
    """``n`` waiting jobs: the first half through the Router, the second half plain."""
    backend = adapters.open_backend(url)  # creates procrastinate's and the adapter's tables
    backend.close()
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("procrastinate_jobs", "cutover_jobs"):
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
    half = n // 2
    with Router(registry, source=url) as router:
        for b in range(0, half, 1000):
            router.enqueue_many([Call(NOOP, kwargs={"n": i})
                                 for i in range(b, min(half, b + 1000))])
    app = app_factory(url)
    with app.open():
        for b in range(half, n, 1000):
            app.tasks[NOOP].batch_defer(*({"n": i} for i in range(b, min(n, b + 1000))))
    if analyzed:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE procrastinate_jobs")
            conn.execute("ANALYZE cutover_jobs")


def native(url: str, n: int, rate: Callable[[int, Callable[[], object]], float],
           app_factory: Callable[[str], Any]) -> float:
    app = app_factory(url)
    with app.open():
        return rate(n, lambda: app.run_worker(wait=False, install_signal_handlers=False,
                                              listen_notify=False, concurrency=1))


def cutover(url: str, n: int, rate: Callable[[int, Callable[[], object]], float],
            app_factory: Callable[[str], Any]) -> float:
    backend = adapters.open_backend(url)
    try:
        worker = Worker(backend, registry, burst=True, concurrency=1, isolation="process")
        measured = rate(n, lambda: worker.run(install_signal_handlers=False))
        assert worker.report.succeeded == n, worker.report
        return measured
    finally:
        backend.close()


WAYS = {"pg procrastinate": native, "pg cutover process": cutover}


def backlog(fresh: Callable[[], str], release: Callable[[str], None], rounds: int,
            sizes: list[int], rate: Callable[[int, Callable[[], object]], float],
            app_factory: Callable[[str], Any],
            summary: Callable[[Rates, list[tuple[str, str]]], dict[str, Any]]
            ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in sizes:
        for analyzed in (False, True):
            rates: Rates = {way: [] for way in WAYS}
            for r in range(rounds):
                ways = list(WAYS.items())
                for way, run in (ways if r % 2 == 0 else ways[::-1]):
                    url = fresh()
                    try:
                        fill(url, n, analyzed, app_factory)
                        rates[way].append(run(url, n, rate, app_factory))
                    finally:
                        release(url)
                    print(f"  backlog {n} {'analyzed' if analyzed else 'never analyzed'} "
                          f"round {r + 1}: {way:<20} {rates[way][-1]:8.0f} jobs/s",
                          file=sys.stderr)
            label = f"{n:,} jobs, {'analyzed' if analyzed else 'never analyzed'}"
            out[label] = summary(rates, [("pg cutover process", "pg procrastinate")])
    return out
