"""What running a task where it can be stopped costs per job (a no-op task).

Three ways to run a job, each measured on the same no-op call:

* ``thread``: the call in the worker's own thread (what a thread pool with a watchdog pays per
  job: nothing beyond the call; the watchdog's bookkeeping is a dict entry);
* ``slot``: a long-lived child process per worker thread, one pipe round trip per job
  (cutover.runner.ProcessSlot, the cutover worker's default);
* ``fork``: a child forked for every job, as RQ's forking ``Worker`` does, the result sent back
  over a pipe.

Then the whole cutover worker on RQ, no-op jobs, concurrency 1, with ``isolation="thread"`` and
``isolation="process"``, interleaved rounds. Usage (repository root):

    CUTOVER_TEST_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m benchmarks.isolation_bench
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable

from cutover.registry import TaskRegistry
from cutover.runner import ProcessSlot, call_task
from cutover.worker import Isolation, Worker

registry = TaskRegistry()


@registry.task(name="bench.noop")
def noop() -> None:
    return None


def per_call(run: Callable[[], object], n: int) -> float:
    """Microseconds per call."""
    started = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - started) / n * 1e6


def fork_once() -> object:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, pickle.dumps(call_task(noop, (), {})))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = pickle.loads(pipe.read())  # our own child wrote it
    os.waitpid(pid, 0)
    return outcome


def worker_rate(url: str, isolation: Isolation, jobs: int) -> float:
    """Jobs per second of a burst cutover worker on RQ (the backlog enqueued beforehand)."""
    from cutover_rq import RQBackend

    backend = RQBackend(url)
    backend.redis.flushdb()
    backend.enqueue([registry.make_record("bench.noop") for _ in range(jobs)])
    started = time.perf_counter()
    report = Worker(backend, registry, burst=True, isolation=isolation,
                    poll_interval=0.05).run(install_signal_handlers=False)
    elapsed = time.perf_counter() - started
    assert report.succeeded == jobs, report
    backend.redis.flushdb()
    backend.close()
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--forks", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    slot = ProcessSlot(registry, "bench-slot")
    slot.run("bench.noop", (), {}, None)  # fork it before timing
    thread_us = per_call(lambda: call_task(noop, (), {}), args.calls)
    slot_us = per_call(lambda: slot.run("bench.noop", (), {}, 60.0), args.calls)
    fork_us = per_call(fork_once, args.forks)
    slot.close()
    print(f"per no-op job: thread {thread_us:.1f} us, slot round trip {slot_us:.1f} us, "
          f"fork per job {fork_us:.1f} us")
    url = os.environ.get("CUTOVER_TEST_REDIS_URL")
    if not url:
        print("set CUTOVER_TEST_REDIS_URL (a Redis db this may flush) for the worker rates",
              file=sys.stderr)
        return
    rates: dict[str, list[float]] = {"thread": [], "process": []}
    for _ in range(args.rounds):
        for isolation in ("thread", "process"):
            rates[isolation].append(worker_rate(url, isolation, args.jobs))  # type: ignore[arg-type]
    ratios = [p / t for p, t in zip(rates["process"], rates["thread"], strict=True)]
    print(f"cutover worker on RQ, {args.jobs} no-op jobs, concurrency 1: "
          f"thread {statistics.median(rates['thread']):.0f} jobs/s, "
          f"process {statistics.median(rates['process']):.0f} jobs/s, process/thread per round "
          + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
