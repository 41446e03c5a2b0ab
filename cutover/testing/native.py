"""Native parity: the same job under the cutover worker and under each backend's own worker.

:func:`assert_native_parity` is what a team runs in CI before it stops using this toolkit's
worker: one job of a task, run four ways, must end the same (state, result, error, attempts)
and its task must receive the same arguments, values and types:

- ``cutover:procrastinate`` and ``cutover:rq``: the cutover worker on each backend;
- ``procrastinate``: procrastinate's own worker (``app.run_worker``) on
  ``cutover_procrastinate.make_app`` -- the worker a team runs once the cut-over is complete;
- ``rq``: RQ's own ``SimpleWorker`` -- the worker a team runs after moving back.

Jobs are enqueued as the Router enqueues them (``backend.enqueue``). Needs the rq and
procrastinate adapters and the pytest plugin's servers; imports them only when called.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.errors import ConfigurationError
from cutover.record import JobRecord, JobState
from cutover.registry import TaskRegistry
from cutover.testing.parity import Outcome, ParityError, compare, run_once, spy_registry

#: The ways a job is run, in the order outcomes are compared (the first is the reference).
WAYS = ("cutover:procrastinate", "procrastinate", "cutover:rq", "rq")


def assert_native_parity(registry: TaskRegistry, task: str | Callable[..., Any], *args: Any,
                         _ways: Sequence[str] = WAYS, _setup: Callable[[], None] | None = None,
                         **kwargs: Any) -> dict[str, Outcome]:
    """Run one job of ``task`` each way of :data:`WAYS` and fail with a readable diff when
    they differ: final state, return value, error (last line), attempts, and the arguments
    each execution received. Returns the outcomes by way.

    ``_setup`` runs before each way (reset what your task keeps between calls); retry backoff
    is set to zero so retries run at once. The task must be importable by its name for RQ's
    worker (a module-level function).
    """
    unknown = set(_ways) - set(WAYS)
    if unknown:
        raise ConfigurationError(f"unknown way(s) {sorted(unknown)}; known: {', '.join(WAYS)}")
    outcomes: dict[str, Outcome] = {}
    for way in _ways:
        if _setup is not None:
            _setup()
        name, _, _ = way.partition(":")
        with _served("rq" if name == "rq" else "procrastinate") as (backend, url):
            if name == "cutover":
                outcomes[way] = run_once(backend, registry, task, args, kwargs)
            elif way == "procrastinate":
                outcomes[way] = _run_procrastinate(backend, url, registry, task, args, kwargs)
            else:
                outcomes[way] = _run_rq(backend, url, registry, task, args, kwargs)
    problems = compare(outcomes)
    if problems:
        raise ParityError(f"workers disagree on {task!r}:\n" + "\n".join(problems))
    return outcomes


@contextlib.contextmanager
def _served(adapter: str) -> Iterator[tuple[QueueBackend, str]]:
    from cutover.testing.plugin import served_url

    with served_url(adapter) as url:
        backend = adapters.open_backend(url)
        try:
            yield backend, url.split("+", 1)[1]
        finally:
            backend.close()


def _outcome(done: JobRecord | None, calls: list[dict[str, Any]], *, result: Any = None,
             error: str | None = None, attempts: int | None = None) -> Outcome:
    if done is None:
        return Outcome(None, None, "job vanished", 0, calls)
    error = error if error is not None else done.error
    return Outcome(done.state, result if result is not None else done.result,
                   error.strip().splitlines()[-1] if error else None,
                   done.attempts if attempts is None else attempts, calls)


def _enqueue_spied(backend: QueueBackend, registry: TaskRegistry,
                   task: str | Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
                   ) -> tuple[TaskRegistry, list[dict[str, Any]], JobRecord, str]:
    """One job enqueued as the Router does, with a spy registry recording its calls."""
    spy, calls = spy_registry(registry)
    record = spy.make_record(task, args, kwargs)
    return spy, calls, record, backend.enqueue([record])[0]


def _run_procrastinate(backend: QueueBackend, url: str, registry: TaskRegistry,
                       task: str | Callable[..., Any], args: Sequence[Any],
                       kwargs: dict[str, Any]) -> Outcome:
    from cutover_procrastinate import make_app

    spy, calls, record, job_id = _enqueue_spied(backend, registry, task, args, kwargs)
    app = make_app(spy, url)
    for _ in range(record.max_attempts + 1):  # a one-shot worker may leave a retry behind
        app.run_worker(wait=False, install_signal_handlers=False, listen_notify=False)
        done = backend.get(job_id)
        if done is None or done.state is not JobState.QUEUED:
            break
    return _outcome(backend.get(job_id), calls)


def _run_rq(backend: QueueBackend, url: str, registry: TaskRegistry,
            task: str | Callable[..., Any], args: Sequence[Any],
            kwargs: dict[str, Any]) -> Outcome:
    import redis
    import rq

    spy, calls, record, job_id = _enqueue_spied(backend, registry, task, args, kwargs)
    conn = redis.Redis.from_url(url)
    # RQ's worker imports the function by its path: point that path at the spy for the run.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _patched(registry, spy):
            rq.SimpleWorker([rq.Queue(record.queue, connection=conn)], connection=conn).work(
                burst=True, logging_level="WARNING")
    finally:  # RQ's worker installs its own and leaves them
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    job = rq.job.Job.fetch(job_id, connection=conn)
    latest = job.latest_result()
    error = latest.exc_string if latest is not None and latest.exc_string else None
    return _outcome(backend.get(job_id), calls, result=job.return_value(), error=error,
                    attempts=len(calls))


@contextlib.contextmanager
def _patched(registry: TaskRegistry, spy: TaskRegistry) -> Iterator[None]:
    saved: list[tuple[Any, str, Any]] = []
    try:
        for task in registry:
            module = sys.modules.get(task.func.__module__)
            attr = task.func.__qualname__
            if module is None or "." in attr or getattr(module, attr, None) is not task.func:
                continue  # not importable by path: RQ's worker fails it, and the diff shows it
            spied = spy.get(task.name)
            assert spied is not None
            saved.append((module, attr, task.func))
            setattr(module, attr, spied.func)
        yield
    finally:
        for module, attr, func in saved:
            setattr(module, attr, func)
