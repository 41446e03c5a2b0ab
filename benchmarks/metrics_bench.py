"""What counting costs on the hot path (cutover.metrics): one Router enqueue observation, one
worker job's three calls, against prometheus_client's own Histogram.observe and a bare
perf_counter pair.

    .venv/bin/python -m benchmarks.metrics_bench [--n 200000] [--rounds 5]

Prints the best and the median ns per operation over the rounds. No servers needed.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram

from cutover.metrics import BUCKETS, Metrics


def per_op(fn: Callable[[int], None], n: int, rounds: int) -> tuple[float, float]:
    """Best and median nanoseconds per operation of ``fn(n)`` (which does ``n`` operations)
    over ``rounds``: on a shared machine the best round is the cost, the median the noise."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - started) / n * 1e9)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    a = parser.parse_args()
    metrics = Metrics()
    hist = Histogram("bench_latency_seconds", "bench", ["backend"], buckets=BUCKETS,
                     registry=CollectorRegistry())
    perf = time.perf_counter

    def empty_loop(n: int) -> None:
        for _ in range(n):
            pass

    def timer_pair(n: int) -> None:
        for _ in range(n):
            started = perf()
            perf() - started

    def enqueue_observation(n: int) -> None:
        enqueued = metrics.enqueued
        for i in range(n):
            enqueued("rq", (i % 1000) * 1e-5)

    def router_overhead(n: int) -> None:
        # what Router._send adds around the backend call: two clock reads and the observation
        enqueued = metrics.enqueued
        for _ in range(n):
            started = perf()
            enqueued("rq", perf() - started, 1)

    def prometheus_observe(n: int) -> None:
        child = hist.labels("rq")
        for i in range(n):
            child.observe((i % 1000) * 1e-5)

    def prometheus_labels_observe(n: int) -> None:
        for i in range(n):
            hist.labels("rq").observe((i % 1000) * 1e-5)

    def worker_job(n: int) -> None:
        for _ in range(n):
            metrics.claimed("rq")
            metrics.outcome("rq", "succeeded")
            metrics.released("rq")

    job = types.SimpleNamespace(queue="default", task="app.tasks.send")

    def worker_job_timed(n: int) -> None:
        # what the worker does since issue 14: the job given, its duration observed per
        # backend, queue, task and outcome
        for _ in range(n):
            metrics.claimed("rq", job)
            metrics.outcome("rq", "succeeded")
            metrics.released("rq")

    base = per_op(empty_loop, a.n, a.rounds)[0]
    rows = [
        ("two perf_counter() reads", timer_pair),
        ("Metrics.enqueued (one enqueue observation)", enqueue_observation),
        ("Router overhead per enqueue (clock pair + observation)", router_overhead),
        ("prometheus Histogram child .observe", prometheus_observe),
        ("prometheus Histogram .labels().observe", prometheus_labels_observe),
        ("worker per job (claimed + outcome + released)", worker_job),
        ("worker per job, duration timed (claimed(job) + outcome + released)",
         worker_job_timed),
    ]
    print(f"{'operation (ns/op, loop overhead ' + f'{base:.0f} ns subtracted)':58} "
          f"{'best':>8} {'median':>8}")
    for label, fn in rows:
        best, median = per_op(fn, a.n, a.rounds)
        print(f"{label:58} {best - base:8.0f} {median - base:8.0f}")
    snap_started = time.perf_counter()
    for _ in range(1000):
        metrics.snapshot()
    print(f"{'Metrics.snapshot() (1 backend)':58} "
          f"{(time.perf_counter() - snap_started) / 1000 * 1e9:8.0f}")


if __name__ == "__main__":
    main()
