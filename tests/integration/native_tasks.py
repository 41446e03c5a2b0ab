"""Tasks that record exactly what they receive, for the native-worker tests.

Importable by path (RQ payloads name these functions) and loadable by procrastinate's own CLI:
``procrastinate --app tests.integration.native_tasks:app worker`` (the database comes from
``CUTOVER_NATIVE_DATABASE_URL``; the connector opens nothing until the worker starts). Each
call is appended, pickled, to the file named by ``CUTOVER_NATIVE_RECORD`` when it is set (so a
worker in another process can report), and to :data:`calls` always.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections import Counter
from typing import Any

from cutover_procrastinate import make_app

from cutover.registry import TaskRegistry

registry = TaskRegistry()
calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
_lock = threading.Lock()
_attempts: Counter[str] = Counter()


def record(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Keep one call: its task, positional args and keyword args, as received."""
    with _lock:
        calls.append((name, args, kwargs))
        path = os.environ.get("CUTOVER_NATIVE_RECORD")
        if path:
            with open(path, "ab") as out:
                pickle.dump((name, args, kwargs), out)


def recorded(path: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Every call a worker process appended to ``path``."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path, "rb") as src:
        while True:
            try:
                out.append(pickle.load(src))
            except EOFError:
                return out


def reset() -> None:
    with _lock:
        calls.clear()
        _attempts.clear()


@registry.task(queue="native")
def kinds(first: Any, *rest: Any, **named: Any) -> int:
    """Takes anything, positionally and by name."""
    record("kinds", (first, *rest), named)
    return len(rest)


@registry.task
def charge(amount: Any, when: Any, ref: Any = None) -> str:
    """Named parameters only: positional RQ args are bound to these names on the way."""
    record("charge", (), {"amount": amount, "when": when, "ref": ref})
    return f"{amount}"


@registry.task(aliases=("tests.integration.native_tasks.old_refuse",))
def refuse(key: str) -> None:
    """Always fails: the job's own retry budget decides how often it runs."""
    record("refuse", (), {"key": key})
    with _lock:
        _attempts[key] += 1
    raise RuntimeError(f"refused {key}")


@registry.task(max_attempts=3, backoff=0)
def budgeted(key: str) -> None:
    """Always fails; the registry gives its jobs three attempts (when the job records it)."""
    record("budgeted", (), {"key": key})
    raise RuntimeError(f"budgeted {key}")


@registry.task
def once(key: str) -> None:
    """Fails the first time for ``key``, then succeeds with no result."""
    record("once", (), {"key": key})
    with _lock:
        _attempts[key] += 1
        first = _attempts[key] == 1
    if first:
        raise RuntimeError(f"first try of {key}")


@registry.task(queue="native")
async def gather(**named: Any) -> dict[str, Any]:
    """A coroutine task."""
    record("gather", (), named)
    return {"n": len(named)}


app = make_app(registry, os.environ.get("CUTOVER_NATIVE_DATABASE_URL",
                                        "postgresql://unset.invalid/unset"))
