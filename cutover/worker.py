"""The worker loop, written once for every backend.

A worker claims a runnable job through the backend (atomically: no other worker of any kind can
start it), resolves its task in the registry, runs it, and records the outcome. Retries follow the
job's own budget and backoff, so they behave the same on every backend. A job whose payload was
quarantined or whose task is unknown is reported once and left where it is, never retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import Any

from cutover.backend import QueueBackend
from cutover.errors import CutoverError
from cutover.record import JobRecord
from cutover.registry import TaskRegistry

log = logging.getLogger("cutover.worker")


@dataclasses.dataclass
class WorkerReport:
    """What a worker did."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    recovered: list[str] = dataclasses.field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed + self.retried


class Worker:
    """Runs registry tasks from one backend with ``concurrency`` threads."""

    def __init__(self, backend: QueueBackend, registry: TaskRegistry, *,
                 queues: Sequence[str] | None = None, concurrency: int = 1, burst: bool = False,
                 poll_interval: float = 0.5, stalled_after: float = 60.0,
                 heartbeat_interval: float = 10.0, name: str | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.backend = backend
        self.registry = registry
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.burst = burst
        self.poll_interval = poll_interval
        self.stalled_after = stalled_after
        self.heartbeat_interval = heartbeat_interval
        self.name = name or f"cutover.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.report = WorkerReport()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._signals = 0
        self._error: CutoverError | None = None

    # -- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to finish the jobs it runs and exit (a warm shutdown)."""
        self._stop.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("worker %s got %s: finishing running jobs, then exiting (send it again to "
                     "exit now)", self.name, name)
            self.stop()
        else:
            log.warning("worker %s got %s again: exiting now; running jobs stay 'started' "
                        "until a worker recovers them as stalled", self.name, name)
            raise SystemExit(1)

    # -- running ---------------------------------------------------------------------------
    def run(self, install_signal_handlers: bool = True) -> WorkerReport:
        """Work until stopped (or, with ``burst``, until nothing runnable is left)."""
        previous: dict[signal.Signals, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        log.info("worker %s started on %s (queues: %s, concurrency %d%s)", self.name,
                 self.backend.url, ", ".join(self.queues) if self.queues else "all",
                 self.concurrency, ", burst" if self.burst else "")
        try:
            self.backend.heartbeat(self.name)
            self._recover()
            beat = threading.Thread(target=self._beat, name=f"{self.name}-heartbeat", daemon=True)
            beat.start()
            threads = [threading.Thread(target=self._loop, name=f"{self.name}-{i}", daemon=True)
                       for i in range(self.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.2)
            self._stop.set()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("worker %s stopped: %d succeeded, %d failed, %d retried, %d skipped",
                 self.name, self.report.succeeded, self.report.failed, self.report.retried,
                 len(self.report.skipped))
        if self._error is not None:
            raise self._error
        return self.report

    def _recover(self) -> None:
        recovered = self.backend.recover_stalled(self.stalled_after)
        if recovered:
            log.warning("recovered %d stalled job(s) of dead workers: %s", len(recovered),
                        ", ".join(recovered))
            with self._lock:
                self.report.recovered.extend(recovered)

    def _beat(self) -> None:
        """Heartbeat, and put back the jobs of workers that died, while the worker runs."""
        last_recovery = time.monotonic()
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self.backend.heartbeat(self.name)
                if time.monotonic() - last_recovery >= self.stalled_after:
                    last_recovery = time.monotonic()
                    self._recover()
            except CutoverError as exc:
                log.error("heartbeat of worker %s failed: %s", self.name, exc)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                job = self.backend.claim(self.queues, self.name, self._accept)
                if job is None:
                    if self.burst:
                        return
                    self._stop.wait(self.poll_interval)
                    continue
                self._execute(job)
        except CutoverError as exc:
            # The backend went away: stop every thread and report it; jobs that were running
            # stay "started" and are recovered as stalled by the next worker.
            log.error("worker %s stops: %s", self.name, exc)
            with self._lock:
                self._error = self._error or exc
            self._stop.set()

    def _accept(self, record: JobRecord) -> str | None:
        reason = record.problem
        if reason is None and record.task not in self.registry:
            reason = f"unknown task {record.task!r}" + self.registry.suggestion(record.task)
        if reason is None:
            return None
        with self._lock:
            first = record.id not in self.report.skipped
            self.report.skipped[record.id] = reason
        if first:
            log.error("skipped job %s on %s: %s (left in place)", record.id,
                      self.backend.name, reason,
                      extra={"job_id": record.id, "task": record.task,
                             "backend": self.backend.name, "event": "quarantined"})
        return reason

    def _execute(self, job: JobRecord) -> None:
        task = self.registry.resolve(job.task, job_id=job.id)
        extra = {"job_id": job.id, "task": task.name, "backend": self.backend.name}
        log.info("started job %s (%s) attempt %d/%d", job.id, task.name, job.attempts + 1,
                 job.max_attempts, extra={**extra, "event": "started"})
        try:
            result = task.func(*job.args, **dict(job.kwargs))
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
        except Exception as exc:
            error = "".join(traceback.format_exception_only(exc)).strip()
            attempts_made = job.attempts + 1
            if attempts_made < job.max_attempts:
                delay = job.retry_delay(attempts_made)
                retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
                self.backend.fail(job, self.name, error, retry_at)
                with self._lock:
                    self.report.retried += 1
                log.warning("job %s (%s) failed: %s; retry %d of %d in %.1fs", job.id, task.name,
                            error, attempts_made, job.max_attempts - 1, delay,
                            extra={**extra, "event": "retried"})
            else:
                self.backend.fail(job, self.name, error, None)
                with self._lock:
                    self.report.failed += 1
                log.error("job %s (%s) failed for good after %d attempt(s): %s", job.id,
                          task.name, attempts_made, error, extra={**extra, "event": "failed"})
            return
        self.backend.complete(job, self.name, result)
        with self._lock:
            self.report.succeeded += 1
        log.info("job %s (%s) succeeded", job.id, task.name, extra={**extra, "event": "succeeded"})


async def _await(awaitable: Any) -> Any:
    return await awaitable
