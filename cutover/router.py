"""The producer facade: ``router.enqueue(task, ...)`` sends a job where the current phase says."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.errors import ConfigurationError
from cutover.metrics import METRICS, Metrics
from cutover.record import JobRecord
from cutover.registry import TaskRegistry


@dataclass(frozen=True)
class Call:
    """One job for :meth:`Router.enqueue_many`: what :meth:`Router.enqueue` takes, as a value.

    ``Call(send_email, args=(user_id,), kwargs={"template": "welcome"}, job_key="welcome-42")``
    """

    task: str | Callable[..., Any]
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    job_key: str | None = None
    queue: str | None = None
    run_at: dt.datetime | None = None
    priority: int | None = None


class Router:
    """Enqueue through the toolkit.

    Until a cut-over is started there is no control plane and the phase is ``off``: every job goes
    to the source backend only, exactly as the application did before. The target URL is opened
    lazily, when a phase needs it.

    Every enqueue call is timed and counted per backend in ``metrics`` (this process's
    :data:`cutover.metrics.METRICS` unless given another): latency, jobs, errors.
    """

    phase = "off"

    def __init__(self, registry: TaskRegistry, source: str, target: str | None = None, *,
                 metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.source_url = source
        self.target_url = target
        self.metrics = METRICS if metrics is None else metrics
        self._source: QueueBackend | None = None

    @classmethod
    def from_env(cls, registry: TaskRegistry) -> Router:
        """Build from ``CUTOVER_SOURCE`` and ``CUTOVER_TARGET``."""
        source = os.environ.get("CUTOVER_SOURCE")
        if not source:
            raise ConfigurationError("CUTOVER_SOURCE is not set (the URL of the backend the "
                                     "application uses today)")
        return cls(registry, source=source, target=os.environ.get("CUTOVER_TARGET") or None)

    @property
    def source(self) -> QueueBackend:
        if self._source is None:
            self._source = adapters.open_backend(self.source_url)
        return self._source

    def enqueue(self, task: str | Callable[..., Any], *args: Any, job_key: str | None = None,
                queue: str | None = None, run_at: dt.datetime | None = None,
                priority: int | None = None, **kwargs: Any) -> str:
        """Enqueue one job; return its cutover id (the live job's id when ``job_key`` is held)."""
        record = self.registry.make_record(task, args, kwargs, job_key=job_key, queue=queue,
                                           run_at=run_at, priority=priority)
        return self._send(self.source, [record])[0]

    def enqueue_many(self, calls: Iterable[Call]) -> list[str]:
        """Enqueue many jobs in one batch (one transaction on PostgreSQL, one pipeline on
        Redis); return each call's cutover id, in order.

        Each call follows :meth:`enqueue`'s rules: a ``job_key`` held by a live job (or by an
        earlier call of the same batch) enqueues nothing and returns that job's id. Every
        call is checked before anything is sent, so an argument that cannot be carried
        enqueues none of them.
        """
        records = [self.registry.make_record(c.task, c.args, c.kwargs, job_key=c.job_key,
                                             queue=c.queue, run_at=c.run_at,
                                             priority=c.priority) for c in calls]
        return self._send(self.source, records) if records else []

    def _send(self, backend: QueueBackend, records: list[JobRecord]) -> list[str]:
        """One enqueue call to ``backend``, timed and counted in :attr:`metrics`."""
        started = time.perf_counter()
        try:
            ids = backend.enqueue(records)
        except BaseException:
            self.metrics.enqueue_failed(backend.name)
            raise
        self.metrics.enqueued(backend.name, time.perf_counter() - started, len(records))
        return ids

    def close(self) -> None:
        """Release connections."""
        if self._source is not None:
            self._source.close()
            self._source = None

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
