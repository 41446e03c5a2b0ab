"""Tasks the contract suite runs. Importable by path, so RQ payloads resolve them too."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from cutover.registry import TaskRegistry

registry = TaskRegistry()

_lock = threading.Lock()
_failures: Counter[str] = Counter()
calls: list[tuple[str, dict[str, Any]]] = []


def _record(name: str, kwargs: dict[str, Any]) -> None:
    with _lock:
        calls.append((name, kwargs))


def reset() -> None:
    with _lock:
        _failures.clear()
        calls.clear()


@registry.task
def add(a: int, b: int) -> int:
    _record("add", {"a": a, "b": b})
    return a + b


@registry.task(aliases=("cutover.testing.tasks.old_echo",))
def echo(**kwargs: Any) -> dict[str, Any]:
    _record("echo", kwargs)
    return kwargs


@registry.task(max_attempts=3, backoff=0)
def flaky(key: str, failures: int) -> str:
    """Fails ``failures`` times for ``key``, then succeeds."""
    _record("flaky", {"key": key, "failures": failures})
    with _lock:
        _failures[key] += 1
        n = _failures[key]
    if n <= failures:
        raise RuntimeError(f"flaky failure {n} of {failures}")
    return f"ok after {n}"


@registry.task
def boom(message: str = "boom") -> None:
    _record("boom", {"message": message})
    raise ValueError(message)


@registry.task(max_attempts=3, backoff=30)
def slow_retry() -> None:
    _record("slow_retry", {})
    raise RuntimeError("always fails")


@registry.task(queue="other")
def elsewhere(n: int) -> int:
    _record("elsewhere", {"n": n})
    return n


@registry.task
def sleepy(seconds: float) -> float:
    """Sleeps, so tests can catch a job while it runs."""
    import time

    _record("sleepy", {"seconds": seconds})
    time.sleep(seconds)
    return seconds


@registry.task
def mark(dsn: str, name: str, fail: bool = False, after: list[str] | None = None) -> str:
    """Records one execution of ``name`` in the table ``cutover_runs (seq serial, name text)``
    of the PostgreSQL database ``dsn`` (the caller creates it): the task's own record, in
    execution order, whichever worker of whichever backend runs it. ``after``: the jobs that
    must have run to the end before this one started; if one had not, the record says
    ``NAME!early``. The record is written when the body ends; then it fails when ``fail``."""
    import psycopg  # here, so that importing the tasks opens nothing

    with psycopg.connect(dsn, autocommit=True) as conn:
        wanted = sorted(set(after or ()))
        row = conn.execute("SELECT count(DISTINCT name) FROM cutover_runs WHERE name = ANY(%s)",
                           (wanted,)).fetchone()
        early = row is not None and row[0] != len(wanted)
        _record("mark", {"name": name})
        conn.execute("INSERT INTO cutover_runs (name) VALUES (%s)",
                     (f"{name}!early" if early else name,))
    if fail:
        raise RuntimeError(f"{name} fails, as asked")
    return name
