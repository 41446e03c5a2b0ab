"""The tasks of benchmarks/perf_bench.py, importable by name by every worker kind (RQ imports a
job's function by its dotted path; procrastinate and cutover find it by that name)."""

from __future__ import annotations

import time

from cutover.registry import TaskRegistry

registry = TaskRegistry()


@registry.task(name="benchmarks.perf_tasks.noop")
def noop(n: int) -> None:
    """Nothing: what a worker costs per job."""
    return None


@registry.task(name="benchmarks.perf_tasks.sleep10")
def sleep10(n: int) -> None:
    """10 ms of waiting (an I/O-bound job)."""
    time.sleep(0.01)
