"""Parity: run one task through every backend and compare what happened."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

from cutover import adapters, codec
from cutover.backend import QueueBackend
from cutover.record import JobState
from cutover.registry import TaskRegistry
from cutover.worker import Worker


class ParityError(AssertionError):
    """The backends disagreed about a task."""


@dataclasses.dataclass
class Outcome:
    """What one backend did with one job."""

    state: JobState | None
    result: Any
    error: str | None
    attempts: int
    calls: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state.value if self.state else None,
                "result": codec.encode(self.result) if _encodable(self.result) else
                repr(self.result), "error": self.error, "attempts": self.attempts,
                "calls": [codec.encode(c) if _encodable(c) else repr(c) for c in self.calls]}


def _encodable(value: Any) -> bool:
    return not codec.check(value)


def spy_registry(registry: TaskRegistry) -> tuple[TaskRegistry, list[dict[str, Any]]]:
    """A copy of the registry whose functions record the args they receive (coroutine
    functions stay coroutine functions), with zero backoff."""
    calls: list[dict[str, Any]] = []
    lock = threading.Lock()
    spy = TaskRegistry()

    def note(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with lock:
            calls.append({"args": copy.deepcopy(list(args)), "kwargs": copy.deepcopy(kwargs)})

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def arecorder(*args: Any, **kwargs: Any) -> Any:
                note(args, kwargs)
                return await func(*args, **kwargs)
            return arecorder

        @functools.wraps(func)
        def recorder(*args: Any, **kwargs: Any) -> Any:
            note(args, kwargs)
            return func(*args, **kwargs)
        return recorder

    for task in registry:
        spy.register(wrap(task.func), name=task.name, queue=task.queue,
                     max_attempts=task.max_attempts, timeout=task.timeout,
                     backoff=[0.0] * len(task.retry_intervals), aliases=task.aliases)
    return spy, calls


def compare(outcomes: dict[str, Outcome]) -> list[str]:
    """Every field on which an outcome differs from the first one, spelled for a person."""
    names = list(outcomes)
    reference = outcomes[names[0]].as_dict()
    lines = []
    for name in names[1:]:
        other = outcomes[name].as_dict()
        for field, value in reference.items():
            if codec.canonical(value) != codec.canonical(other[field]):
                lines.append(f"  {field}:\n    {names[0]:<22} {value!r}\n"
                             f"    {name:<22} {other[field]!r}")
    return lines


def run_once(backend: QueueBackend, registry: TaskRegistry, task: str | Callable[..., Any],
             args: Sequence[Any], kwargs: dict[str, Any], timeout: float = 60.0) -> Outcome:
    """Enqueue one job on ``backend``, run a burst worker, and report the outcome."""
    spy, calls = spy_registry(registry)
    record = spy.make_record(task, args, kwargs)
    job_id = backend.enqueue([record])[0]
    Worker(backend, spy, burst=True, poll_interval=0.05).run(install_signal_handlers=False)
    done = backend.get(job_id)
    if done is None:
        return Outcome(None, None, "job vanished", 0, calls)
    error = done.error.splitlines()[-1] if done.error else None
    return Outcome(done.state, done.result, error, done.attempts, calls)


def assert_parity(registry: TaskRegistry, task_name: str | Callable[..., Any], *args: Any,
                  _backends: Sequence[str] | None = None,
                  _setup: Callable[[], None] | None = None, **kwargs: Any) -> dict[str, Outcome]:
    """Run the task once on every installed backend (each with a burst worker) and fail with a
    readable diff when the outcomes differ: final state, return value, error, attempts taken,
    and the arguments each call received. Returns the outcomes by backend.

    ``_backends`` limits the adapters compared; ``_setup`` runs before each backend's run (reset
    the state your task keeps between calls). Retry backoff is set to zero so retries run at once.
    """
    from cutover.testing.plugin import SERVED, backend_for

    names = list(_backends) if _backends else [n for n in SERVED if n in adapters.available()]
    outcomes: dict[str, Outcome] = {}
    for name in names:
        if _setup is not None:
            _setup()
        with backend_for(name) as backend:
            outcomes[name] = run_once(backend, registry, task_name, args, kwargs)
    lines = compare(outcomes)
    if lines:
        raise ParityError(f"backends disagree on {task_name!r}:\n" + "\n".join(lines))
    return outcomes
