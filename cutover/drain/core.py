"""The :class:`Drain`: planning, the run (pair lock, run row, signals), recovery then passes,
and the reading side of each pass (classify, take) feeding the put and release stages."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from cutover import adapters, dependencies, faults, stores
from cutover.audit import AuditReport, Classifier, JobClass
from cutover.backend import Partition, QueueBackend
from cutover.control import ControlPlane
from cutover.drain.pipeline import Batch, Pipeline
from cutover.drain.processes import Barrier, Group
from cutover.drain.recovery import recover
from cutover.drain.report import DrainOptions, DrainReport
from cutover.drain.steps import Steps
from cutover.errors import (
    ConfigurationError,
    PreconditionError,
)
from cutover.held import drain_owner
from cutover.record import JobRecord, JobState, utcnow
from cutover.registry import TaskRegistry
from cutover.urls import secrets_of

log = logging.getLogger("cutover.drain")

WAITING = (JobState.QUEUED, JobState.SCHEDULED, JobState.HELD)


Progress = Callable[[int, int], None]


class Drain:
    """One drain from ``source`` to ``target``."""

    def __init__(self, source: QueueBackend, source_url: str, target: QueueBackend,
                 target_url: str, control: ControlPlane, registry: TaskRegistry,
                 options: DrainOptions, progress: Progress | None = None, *,
                 run_id: str | None = None, partition: Partition | None = None,
                 barrier: Barrier | None = None) -> None:
        self.source, self.target = source, target
        self.source_url, self.target_url = source_url, target_url
        # The ledger, the runs, the pair lock and the owner of held jobs know the stores by
        # identity (one key whatever the URL's spelling); refused when both are one store.
        self.stores = stores.distinct(source, target, "drain")
        self.source_key, self.target_key = self.stores[0].key, self.stores[1].key
        self.control = control
        self.registry = registry
        self.options = options
        self.progress = progress or (lambda done, total: None)
        self.owner = drain_owner(self.target_key)
        self.run_id = run_id or f"drain-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.report = DrainReport(run_id=self.run_id)
        self.done = 0
        self.total = 0
        self.classify = Classifier(registry, target, include_failed=options.include_failed,
                                   owner=self.owner)
        self._inflight: set[str] = set()  # handed to the mover, not finished yet
        self._inflight_lock = threading.Lock()
        self.steps = Steps(source=source, target=target, control=control, registry=registry,
                           source_key=self.source_key, target_key=self.target_key,
                           run_id=self.run_id, owner=self.owner, report=self.report,
                           shared_source=_same_database(source_url, control.url),
                           shared_target=_same_database(target_url, control.url))
        # In a drain process of several (a drain worker, see cutover.drain.processes): its share
        # of the source, and the wait for the others once it has read a window and once it has
        # taken its share.
        self.partition = partition
        self.barrier: Barrier = barrier or (lambda moved, done: None)
        self.stop_requested = threading.Event()

    # -- planning --------------------------------------------------------------------------
    def _states(self) -> list[JobState]:
        """What a drain reads: waiting jobs to move, and deferred and failed ones to move or to
        report as left in place."""
        return [*WAITING, JobState.DEFERRED, JobState.FAILED]

    def _verdict(self, record: JobRecord) -> tuple[JobRecord, JobClass, str]:
        normal, verdict = self.classify(record)
        if normal.state is JobState.DEFERRED and verdict.job_class.moves:
            # Its dependencies are done (on either side): it arrives ready to run.
            normal = normal.replace(state=JobState.QUEUED)
        return normal, verdict.job_class, verdict.reason

    def plan(self, every_job: bool = False) -> AuditReport:
        """What a run would do (changes nothing): the jobs a run reads, classified by the same
        :class:`~cutover.audit.Classifier` as audit and the run itself, with the reasons of
        everything that would not move (every verdict by id with ``every_job``)."""
        report = AuditReport(every_job=every_job)
        self.classify.read_dependencies(self.source, self.options.batch_size)
        for batch in self.source.batches(states=self._states(), queues=self.options.queues,
                                         batch_size=self.options.batch_size):
            for record in batch:
                report.add(*self.classify(record))
        running = sum(per[JobState.STARTED] for per in self.source.counts(
            self.options.queues).values())
        if running:
            report.by_class["running"] = running
        return report

    # -- running ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the drain to stop after the batches in hand (as ``--signal stop`` does)."""
        self.stop_requested.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.stop_requested.is_set():
            log.warning("drain %s got %s: stopping after the batches in hand (send it again to "
                        "stop at once; the next run finishes what was under way)", self.run_id,
                        name)
            self.stop()
            return
        log.warning("drain %s got %s again: stopping now; the next run finishes what was under "
                    "way", self.run_id, name)
        raise SystemExit(2)

    def run(self, install_signal_handlers: bool = True) -> DrainReport:
        """Drain. SIGTERM or SIGINT (when run in the main thread) stops it after the batches in
        hand, like ``--signal stop``; a second one stops it at once (nothing is lost either way).
        """
        started = time.monotonic()
        stores.require_queues(self.source, self.options.queues)
        if self.options.dry_run:
            plan = self.plan()
            self.report.planned, self.report.plan_jobs = dict(plan.by_class), plan.details
            return self.report
        self._check_workers()
        if not self.control.lock_pair(self.source_key, self.target_key):
            raise PreconditionError("another drain between these two backends is running",
                                    source=self.stores[0].url, target=self.stores[1].url)
        try:
            self.control.meet(self.stores[0], self.source_url)
            self.control.meet(self.stores[1], self.target_url)
        except BaseException:
            self.control.unlock_pair(self.source_key, self.target_key)
            raise
        previous: dict[signal.Signals, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        state = "failed"
        try:
            self.control.start_run(self.run_id, "drain", self.source_key, self.target_key,
                                   dataclasses.asdict(self.options))
            self.total = sum(per[s] for per in self.source.counts(self.options.queues).values()
                              for s in WAITING)
            recover(self.steps, self.options.batch_size)
            self._passes()
            self._wait_for_running()
            state = "stopped" if self.report.stopped else "finished"
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.report.seconds = time.monotonic() - started
            try:
                self.control.finish_run(self.run_id, state, self.report.moved,
                                        self.report.left_count)
            finally:
                self.control.unlock_pair(self.source_key, self.target_key)
        return self.report

    def _check_workers(self) -> None:
        workers = self.options.workers
        if workers < 1:
            raise ConfigurationError(f"workers must be at least 1, not {workers}")
        if workers == 1:
            return
        local = [b.name for b in (self.source, self.target) if not b.capabilities.shared]
        if local:
            raise ConfigurationError(
                f"the {local[0]} backend lives in this process only: other worker processes "
                "would not see its jobs; drain it with one worker (--workers 1)")
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ConfigurationError("several drain workers need os.fork (Linux, macOS): "
                                     "use --workers 1 here")

    def _passes(self) -> None:
        """Passes over the source until one moves nothing: a second pass catches jobs that
        became waiting meanwhile (retries, jobs producers added) without looping forever."""
        if self.options.workers > 1:
            self._passes_in_processes()
        else:
            self._passes_here()

    def _passes_in_processes(self) -> None:
        """The passes in ``options.workers`` processes, each with its own drain over its share
        (same run, same options, fresh connections); their reports merged into this one."""
        def stop_workers() -> None:
            self.control.set_switch(self.source_key, self.target_key, "stop")

        group = Group(n=self.options.workers, make=self._member, progress=self.progress,
                      total=self.total, stop_requested=self.stop_requested,
                      on_stop=stop_workers, name=f"drain {self.run_id}",
                      secrets=(*secrets_of(self.source_url), *secrets_of(self.target_url),
                               *secrets_of(self.control.url)))
        stopped, reports = group.run()
        self.report.stopped |= stopped
        for report in reports:
            self.report.merge(report)

    def _member(self, k: int, n: int, barrier: Barrier) -> Drain:
        """Drain worker ``k`` of ``n`` (built in the forked child): the parent's run and
        options, its own connections, constructed complete."""
        return Drain(adapters.open_backend(self.source_url), self.source_url,
                     adapters.open_backend(self.target_url), self.target_url,
                     ControlPlane(self.control.url, self.control.schema,
                                  pooling=self.control.pooling), self.registry,
                     dataclasses.replace(self.options), run_id=self.run_id,
                     partition=(k, n), barrier=barrier)

    def close(self) -> None:
        """Close this drain's backends and control-plane connection (a drain worker's own)."""
        for closable in (self.source, self.target, self.control):
            with contextlib.suppress(Exception):
                closable.close()

    def _passes_here(self) -> None:
        """The passes in this process."""
        while self.one_pass() and not self.report.stopped:
            pass

    def one_pass(self) -> int:
        """Read the source once (this process's share of it, with a partition), moving what
        can move. Returns how many jobs moved."""
        moved_before = self.report.moved
        view = self.classify.read_dependencies(self.source, self.options.batch_size)
        queued = dependencies.release(self.source, view, self.options.queues)
        if queued:
            log.info("queued %d deferred job(s) on the source whose dependencies are done and "
                     "that other deferred jobs wait on: %s", len(queued), ", ".join(queued[:20]))
        rate = self.options.rate / self.options.workers if self.options.rate else None
        with Pipeline([("put", self._put_stage), ("release", self._release_stage)]) as pipe:
            for batch in self.source.batches(states=self._states(), queues=self.options.queues,
                                             batch_size=self.options.batch_size,
                                             partition=self.partition):
                if self._switch() == "stop":
                    self.report.stopped = True
                    break
                t0 = time.monotonic()
                self.barrier(self.report.moved, self.done)
                ready, failed = self._prepare(batch)
                pipe.submit(Batch(ready, failed, len(batch)))
                self._throttle(len(batch), time.monotonic() - t0, rate)
                self.barrier(self.report.moved, self.done)
        return self.report.moved - moved_before

    def _prepare(self, batch: Sequence[JobRecord]) -> tuple[list[JobRecord], list[JobRecord]]:
        """Classify a batch and take its movable jobs (the reading side of the pipeline: the
        take happens before the next batch is read, so the source keeps its place)."""
        movable: list[JobRecord] = []
        failed: list[JobRecord] = []
        with self._inflight_lock:
            batch = [r for r in batch
                     if r.id not in self._inflight and r.id not in self.steps.refused]
        ours_staying: list[str] = []
        for raw in batch:
            record, cls, reason = self._verdict(raw)
            if cls.moves or (cls is JobClass.FAILED and self.options.include_failed):
                (failed if record.state is JobState.FAILED else movable).append(record)
            else:
                self.report.leave(cls.value, record.id, record.task, record.queue, reason)
                if record.state is JobState.HELD and record.holder == self.owner:
                    ours_staying.append(record.id)
        if ours_staying:
            # Held for this pair by an earlier run (killed, or older than a limit that now
            # keeps them here): this run will not move them, so no run would ever let them go.
            log.warning("giving back %d job(s) an earlier drain held and this one leaves in "
                        "place", len(ours_staying))
            self.source.give_back(ours_staying, self.owner)
        ready: list[JobRecord] = []
        if movable:
            by_id = {r.id: r for r in movable}
            taken = self.source.take(list(by_id), self.owner, fetch=False)
            faults.point("after_take")
            ready = [by_id[i] for i in taken.taken_ids if i in by_id]
            for job_id, why in taken.refused.items():
                # A deferred job began to wait on it since it was read: it stays (other
                # refusals are jobs that ran, or that another pass or worker moved).
                if job_id in by_id and why.startswith("deferred job "):
                    record = by_id[job_id]
                    self.report.leave(JobClass.IN_PLACE.value, job_id, record.task,
                                      record.queue, f"not taken: {why}")
        with self._inflight_lock:
            self._inflight.update(r.id for r in ready)
            self._inflight.update(r.id for r in failed)
        return ready, failed

    def _put_stage(self, batch: Batch) -> Batch:
        """The writing side, first stage: put on the target with the ledger rows."""
        work = batch.ready + batch.failed  # failed jobs are not taken (no worker starts them)
        if work:
            if not self.steps.shared_target:
                work = self.steps.without_reused_ids(work)
                # The put cannot share the ledger's transaction: say first what is about to move.
                self.control.record(work, state="moving", source=self.source_key,
                                    target=self.target_key, run_id=self.run_id)
                faults.point("after_intent")
            batch.moved = [r.id for r in self.steps.put(work)]
            faults.point("after_put")
        return batch

    def _release_stage(self, batch: Batch) -> None:
        """Second stage: remove what was put from the source, then let the reader see those
        ids again (a job given back meanwhile is read by the next pass)."""
        try:
            self.steps.release(batch.moved)
            if batch.moved:
                faults.point("after_release")
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(r.id for r in batch.ready)
                self._inflight.difference_update(r.id for r in batch.failed)
        self.done += batch.size
        self.progress(self.report.moved, max(self.total, self.done))

    def _switch(self) -> str:
        """The operator's switch: run, pause (wait here) or stop; a stop() (a signal) wins."""
        value = "stop" if self.stop_requested.is_set() else self.control.switch(self.run_id)
        if value == "pause":
            log.warning("drain %s paused by the operator (cutover drain --signal resume)",
                        self.run_id)
            while value == "pause":
                self.stop_requested.wait(0.5)
                value = ("stop" if self.stop_requested.is_set()
                         else self.control.switch(self.run_id))
            log.warning("drain %s: %s", self.run_id, "resumed" if value == "run" else "stopping")
        return value

    def _throttle(self, n: int, took: float, rate: float | None) -> None:
        if rate:
            wait = n / rate - took
            if wait > 0:
                time.sleep(wait)

    def _wait_for_running(self) -> None:
        """Wait (up to ``wait_running`` seconds) for the jobs running on the source once the
        passes are over, passing again meanwhile: one that ends has run; one that is retried
        waits again and the next pass moves it. Jobs a worker starts after that were waiting
        at a pass (a worker took them first: they run where they are); waiting for every running
        job instead would never end on a source whose workers keep taking new jobs. Those of
        the set still running at the deadline are reported."""
        deadline = time.monotonic() + self.options.wait_running
        watched: set[str] | None = None
        while True:
            now = {r.id for r in self.source.snapshot(states=[JobState.STARTED],
                                                      queues=self.options.queues)}
            watched = now if watched is None else watched & now
            if not watched or time.monotonic() >= deadline or self.report.stopped:
                self.report.running = sorted(watched)
                return
            log.info("waiting for %d running job(s) on the source", len(watched))
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
            self._passes_here()  # stragglers: in this process, whatever --workers says


def _same_database(backend_url: str, control_url: str) -> bool:
    inner = adapters.split(backend_url)[1]
    return inner.split("?", 1)[0] == control_url.split("?", 1)[0]
