"""What the drain's dependency facts cost per pass (cutover.dependencies.DependencyView.read).

N parents queued, each with one dependent deferred on it, beside a queue of 10*N other jobs: the
drain reads the deferred registries and the parents' states once per pass. Usage (repository
root; the Redis database must be empty, it is flushed afterwards):

    CUTOVER_TEST_REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python -m benchmarks.dependency_bench
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import redis
import rq
from cutover_rq.backend import RQBackend

from cutover.dependencies import DependencyView
from cutover.testing import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    url = os.environ["CUTOVER_TEST_REDIS_URL"]
    conn = redis.Redis.from_url(url)
    if conn.dbsize():
        raise SystemExit(f"{url}: the database is not empty; give an empty one")
    try:
        queue = rq.Queue("default", connection=conn)
        for i in range(args.groups * 10):
            queue.enqueue(tasks.add, i, 0)
        for i in range(args.groups):
            queue.enqueue(tasks.add, 0, 2, depends_on=queue.enqueue(tasks.add, i, 1))
        source = RQBackend(url)
        times = []
        for _ in range(args.rounds):
            started = time.monotonic()
            view = DependencyView.read(source, None)
            times.append(time.monotonic() - started)
        assert len(view.parents) == args.groups
        print(f"{args.groups} dependents of {args.groups} parents beside {args.groups * 10} "
              f"jobs: median {statistics.median(times):.3f} s per pass "
              f"(min {min(times):.3f}, max {max(times):.3f})")
        source.close()
    finally:
        conn.flushdb()


if __name__ == "__main__":
    main()
