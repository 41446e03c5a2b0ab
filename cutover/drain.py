"""Drain: move every movable job from a source backend to a target, with proof in the ledger.

Each batch goes through three steps, each one idempotent:

1. take: the jobs are moved out of reach of the source's workers and held (so none of them can
   start while it moves); the ledger gets an intent row ``moving``;
2. put: the jobs are written to the target, and their ledger rows become ``moved`` — in the same
   transaction when the target is PostgreSQL;
3. release: the held copies are removed from the source; ledger rows become ``released`` — in
   the same transaction when the source is PostgreSQL.

Killed anywhere, the next run first finishes what the ledger and the source's held jobs say was
under way, then goes on. Running jobs are never moved. Jobs that cannot move are left in place
and reported with their class and reason.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from cutover import dependencies, faults, stores
from cutover.audit import AuditReport, Classifier, JobClass
from cutover.backend import Partition, QueueBackend
from cutover.control import ControlPlane
from cutover.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    JobConflictError,
    PreconditionError,
)
from cutover.held import drain_owner
from cutover.record import JobRecord, JobState, utcnow
from cutover.registry import TaskRegistry

log = logging.getLogger("cutover.drain")

WAITING = (JobState.QUEUED, JobState.SCHEDULED, JobState.HELD)


@dataclasses.dataclass
class DrainOptions:
    queues: list[str] | None = None
    batch_size: int = 1000
    rate: float | None = None
    include_failed: bool = False
    wait_running: float = 0.0
    dry_run: bool = False
    workers: int = 1  # processes that split the source between them


@dataclasses.dataclass
class DrainReport:
    moved: int = 0
    recovered: int = 0
    left: dict[str, list[dict[str, str]]] = dataclasses.field(default_factory=dict)
    running: list[str] = dataclasses.field(default_factory=list)
    planned: dict[str, int] = dataclasses.field(default_factory=dict)
    plan_jobs: dict[str, list[dict[str, str]]] = dataclasses.field(default_factory=dict)
    lost: list[str] = dataclasses.field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0
    run_id: str = ""

    @property
    def left_count(self) -> int:
        return sum(len(v) for v in self.left.values()) + len(self.running)

    @property
    def rate(self) -> float:
        return self.moved / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "moved": self.moved, "recovered": self.recovered,
                "left": self.left, "running": self.running, "planned": self.planned,
                "lost": self.lost, "stopped": self.stopped, "seconds": round(self.seconds, 3),
                "jobs_per_second": round(self.rate, 1)}


Progress = Callable[[int, int], None]


class Drain:
    """One drain from ``source`` to ``target``."""

    def __init__(self, source: QueueBackend, source_url: str, target: QueueBackend,
                 target_url: str, control: ControlPlane, registry: TaskRegistry,
                 options: DrainOptions, progress: Progress | None = None) -> None:
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
        self.run_id = f"drain-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.report = DrainReport(run_id=self.run_id)
        self.done = 0
        self.total = 0
        self._left_ids: set[str] = set()
        # Jobs the target refused at put (isolated, given back, reported): not tried again in
        # this run, so that a poison job given back to the head of its list is not read, taken
        # and refused over and over.
        self._refused: dict[str, str] = {}
        self.classify = Classifier(registry, target, include_failed=options.include_failed,
                                   owner=self.owner)
        self._inflight: set[str] = set()  # handed to the mover, not finished yet
        self._inflight_lock = threading.Lock()
        # The ledger shares a backend's transaction only when it lives in that backend's database.
        self._shared_source = _same_database(source_url, control.url)
        self._shared_target = _same_database(target_url, control.url)
        # In a drain process of several: its share of the source, and the wait for the others
        # once it has read a window and once it has taken its share (see cutover.drain_workers).
        self.partition: Partition | None = None
        self.stop_requested = threading.Event()
        self.barrier: Callable[[str], None] = lambda step: None

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
            self._recover()
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

    def merge(self, report: dict[str, Any]) -> None:
        """Add the report of a drain worker process (see cutover.drain_workers) to this one."""
        self.report.moved += report["moved"]
        self.report.lost += report["lost"]
        self.report.stopped |= report["stopped"]
        for cls, jobs in report["left"].items():
            for job in jobs:
                self._leave(cls, job)

    def _leave(self, cls: str, job: dict[str, str]) -> None:
        """Report a job left in place, once however many passes (or workers) meet it."""
        if job["id"] not in self._left_ids:
            self._left_ids.add(job["id"])
            self.report.left.setdefault(cls, []).append(job)

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

    def _recover(self) -> None:
        """Finish the moves an interrupted run left half done (the ledger says so)."""
        unfinished = self.control.unfinished(self.source_key, self.target_key)
        if not unfinished:
            return
        log.warning("finishing %d move(s) an earlier drain left under way", len(unfinished))
        moving = [i for i, state, _ in unfinished if state == "moving"]
        moved = [i for i, state, _ in unfinished if state == "moved"]
        for chunk in _chunks(moving, self.options.batch_size):
            held = {r.id: r for r in self.source.take(chunk, self.owner).taken}  # with records
            gone = [i for i in chunk if i not in held]
            if held:
                done = self._put(list(held.values()), recovered=True)
                self._release([r.id for r in done])
            for job_id in gone:
                # Not held on the source: either the put happened (a failed job, or the release
                # committed while the ledger write did not), or the job is still on the source in
                # a state a drain does not take.
                on_source = self.source.get(job_id)
                if self.target.get(job_id) is not None:
                    moved.append(job_id)
                elif on_source is not None:
                    self.report.left.setdefault(JobClass.IN_PLACE.value, []).append(
                        {"id": job_id, "task": on_source.task, "queue": on_source.queue,
                         "reason": f"was moving; now {on_source.state.value} on the source"})
                else:
                    self.report.lost.append(job_id)
                    log.error("job %s: the ledger says it was moving, but neither backend has "
                              "it", job_id)
        for chunk in _chunks(moved, self.options.batch_size):
            self._release(chunk)
            self.report.recovered += len(chunk)

    def _passes(self) -> None:
        """Passes over the source until one moves nothing: a second pass catches jobs that
        became waiting meanwhile (retries, jobs producers added) without looping forever."""
        if self.options.workers > 1:
            from cutover import drain_workers

            drain_workers.run_passes(self)
        else:
            self._passes_here()

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
        with _Pipeline([("put", self._put_stage), ("release", self._release_stage)]) as pipe:
            for batch in self.source.batches(states=self._states(), queues=self.options.queues,
                                             batch_size=self.options.batch_size,
                                             partition=self.partition):
                if self._switch() == "stop":
                    self.report.stopped = True
                    break
                t0 = time.monotonic()
                self.barrier("read")
                ready, failed = self._prepare(batch)
                pipe.submit(_Batch(ready, failed, len(batch)))
                self._throttle(len(batch), time.monotonic() - t0, rate)
                self.barrier("taken")
        return self.report.moved - moved_before

    def _prepare(self, batch: Sequence[JobRecord]) -> tuple[list[JobRecord], list[JobRecord]]:
        """Classify a batch and take its movable jobs (the reading side of the pipeline: the
        take happens before the next batch is read, so the source keeps its place)."""
        movable: list[JobRecord] = []
        failed: list[JobRecord] = []
        with self._inflight_lock:
            batch = [r for r in batch if r.id not in self._inflight and r.id not in self._refused]
        ours_staying: list[str] = []
        for raw in batch:
            record, cls, reason = self._verdict(raw)
            if cls.moves or (cls is JobClass.FAILED and self.options.include_failed):
                (failed if record.state is JobState.FAILED else movable).append(record)
            else:
                self._leave(cls.value, {"id": record.id, "task": record.task,
                                        "queue": record.queue, "reason": reason})
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
                    self._leave(JobClass.IN_PLACE.value, {
                        "id": job_id, "task": record.task, "queue": record.queue,
                        "reason": f"not taken: {why}"})
        with self._inflight_lock:
            self._inflight.update(r.id for r in ready)
            self._inflight.update(r.id for r in failed)
        return ready, failed

    def _put_stage(self, batch: _Batch) -> _Batch:
        """The writing side, first stage: put on the target with the ledger rows."""
        work = batch.ready + batch.failed  # failed jobs are not taken (no worker starts them)
        if work:
            if not self._shared_target:
                work = self._without_reused_ids(work)
                # The put cannot share the ledger's transaction: say first what is about to move.
                self.control.record(work, state="moving", source=self.source_key,
                                    target=self.target_key, run_id=self.run_id)
                faults.point("after_intent")
            batch.moved = [r.id for r in self._put(work)]
            faults.point("after_put")
        return batch

    def _release_stage(self, batch: _Batch) -> None:
        """Second stage: remove what was put from the source, then let the reader see those
        ids again (a job given back meanwhile is read by the next pass)."""
        try:
            self._release(batch.moved)
            if batch.moved:
                faults.point("after_release")
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(r.id for r in batch.ready)
                self._inflight.difference_update(r.id for r in batch.failed)
        self.done += batch.size
        self.progress(self.report.moved, max(self.total, self.done))

    def _put(self, records: list[JobRecord], recovered: bool = False) -> list[JobRecord]:
        """Put on the target; mark the ledger rows moved (in the target's transaction when it
        shares the control plane's database). Returns the records now on the target."""
        now = utcnow()
        ready = []
        for raw in records:
            record = self.registry.normalize(raw)
            state = (JobState.FAILED if record.state is JobState.FAILED else
                     JobState.SCHEDULED if record.run_at and record.run_at > now
                     else JobState.QUEUED)
            if record.state is not state or record.holder is not None:
                record = record.replace(state=state, holder=None)  # a fresh memo: only if needed
            ready.append(record)

        refusals: list[str] = []
        done = self._put_isolating(ready, refusals)
        if len(ready) > 1 and len(refusals) == len(ready) and len(set(refusals)) == 1:
            # Every job of the batch, for one reason: that is the store (read-only, no
            # rights...), not the jobs. Stop here rather than try the whole source job by job.
            raise BackendError(f"the target refused all {len(ready)} jobs of a batch for one "
                               f"reason: {refusals[0]}; they were given back to the source "
                               "(failure rows recorded)", target=self.target_key)
        if recovered:
            self.report.recovered += len(done)
        else:
            self.report.moved += len(done)
        return done

    def _put_marked(self, records: list[JobRecord]) -> None:
        """One put with its ledger rows marked moved: in the target's own transaction when it
        shares the control plane's database, otherwise only once the put has committed (never
        "moved" before it is)."""
        def mark(conn: Any) -> None:
            if conn is not None:  # the target's own transaction: the rows commit with the jobs
                self.control.record(records, state="moved", source=self.source_key,
                                    target=self.target_key, run_id=self.run_id, conn=conn)
            else:
                self.control.mark([r.id for r in records], state="moved",
                                  source=self.source_key, target=self.target_key)

        self.target.put(records, tx_hook=mark if self._shared_target else None)
        if not self._shared_target:
            mark(None)

    def _put_isolating(self, records: list[JobRecord],
                       refusals: list[str]) -> list[JobRecord]:
        """Put a batch; if the target refuses it, find the jobs it refuses by halves (a batch
        of n with one poison job costs about 2 log2 n puts, not n), put every other one, and
        give each refused job back to the source with a failure row. Only an unreachable
        backend stops the run (the jobs stay held; the next run finishes them). Returns the
        records now on the target; ``refusals`` gets each refused job's reason."""
        if not records:
            return []
        try:
            self._put_marked(records)
            return records
        except BackendUnavailableError:
            raise
        except JobConflictError as exc:
            if len(records) == 1:
                return self._conflict(records[0], exc)
        except Exception as exc:  # whatever the target says, it is about these jobs
            if len(records) == 1:
                self._refuse(records[0], exc)
                refusals.append(str(exc))
                return []
        half = len(records) // 2
        return (self._put_isolating(records[:half], refusals)
                + self._put_isolating(records[half:], refusals))

    def _without_reused_ids(self, work: list[JobRecord]) -> list[JobRecord]:
        """``work`` less the jobs whose id a finished move of this pair gave to a job the target
        still has: each is a new job under a used id (see :meth:`_conflict`), given back before
        this run's intent row would overwrite the ledger's record of that finished move."""
        pair = (self.source_key, self.target_key)
        rows = self.control.states([r.id for r in work])
        clash = {r.id for r in work if (row := rows.get(r.id)) is not None
                 and row[0] == "released" and row[1:] == pair
                 and self.target.get(r.id) is not None}
        for record in work:
            if record.id in clash:
                self._give_back(record, "id_conflict", _REUSED)
        return [r for r in work if r.id not in clash] if clash else work

    def _conflict(self, record: JobRecord, exc: JobConflictError) -> list[JobRecord]:
        """The target has a different job with this id: ours if a run put it and did not finish
        the move (the ledger says moving or moved; a worker may have run it since), else a real
        collision (given back). A finished move of this pair ("released") removed its job from
        the source: a job under that id on the source now is a new one (a producer that names
        its jobs used the id again), and taking the target's old job for it would delete the
        only copy of the new one."""
        row = self.control.states([record.id]).get(record.id)
        if row is not None and row[0] == "released" and row[1:] == (self.source_key,
                                                                     self.target_key):
            self._give_back(record, "id_conflict", f"{_REUSED} ({exc})")
            return []
        if (row is not None and row[1:] == (self.source_key, self.target_key)
                and self.target.get(record.id) is not None):
            self.control.record([record], state="moved", source=self.source_key,
                                target=self.target_key, run_id=self.run_id)
            return [record]
        self._give_back(record, "id_conflict", str(exc))
        return []

    def _refuse(self, record: JobRecord, exc: BaseException) -> None:
        """The target refused this one job: give it back, say why, carry on."""
        self._give_back(record, JobClass.UNSUPPORTED.value, f"the target refused it: {exc}")

    def _give_back(self, record: JobRecord, cls: str, reason: str) -> None:
        """A job this run took and will not move: back to where it was on the source, its
        intent row (if any) forgotten, a failure row and a line in the report."""
        log.error("job %r left on the source (%s): %s", record.id, cls, reason)
        self.source.give_back([record.id], self.owner)
        if not self._shared_target:
            # The intent row written before the put: the job never moved.
            self.control.forget([record.id], source=self.source_key, target=self.target_key)
        self.control.fail(self.run_id, [(record.id, self.target_key, cls, reason)])
        self._refused[record.id] = reason
        self._leave(cls, {"id": record.id, "task": record.task, "queue": record.queue,
                          "reason": reason})

    def _release(self, ids: list[str]) -> None:
        if not ids:
            return

        def mark(conn: Any) -> None:
            self.control.mark(ids, state="released", source=self.source_key,
                              target=self.target_key, conn=conn)

        self.source.remove(ids, tx_hook=mark if self._shared_source else None)
        if not self._shared_source:
            mark(None)

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
        deadline = time.monotonic() + self.options.wait_running
        while True:
            running = [r.id for r in self.source.snapshot(states=[JobState.STARTED],
                                                          queues=self.options.queues)]
            if not running or time.monotonic() >= deadline or self.report.stopped:
                self.report.running = running
                return
            log.info("waiting for %d running job(s) on the source", len(running))
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
            self._passes_here()  # stragglers: in this process, whatever --workers says


_REUSED = ("a new job under the id of a job moved earlier, which the target still has: give "
           "it another id, or let it run on the source")

_END = object()  # the end of a pipeline's input


@dataclasses.dataclass
class _Batch:
    ready: list[JobRecord]  # taken on the source
    failed: list[JobRecord]  # failed jobs moving with --include-failed (not taken)
    size: int  # jobs read, for progress
    moved: list[str] = dataclasses.field(default_factory=list)  # now on the target


class _Pipeline:
    """Ordered stages, a thread each, joined by short queues: while the reader takes the next
    batch, the put stage writes the one before to the target and the release stage removes the
    one before that from the source. Each stage handles batches in the order they came, so the
    target receives them in the source's order. An error in a stage stops that stage and the
    ones before it (no more reading, no more puts), while the stages after it finish the batches
    they were handed (a batch that was put is still released). Jobs taken and not put stay held,
    jobs put and not released stay in the ledger as moved: the next run finishes both. The
    first error is raised once every thread has ended."""

    def __init__(self, stages: list[tuple[str, Callable[[Any], Any]]], depth: int = 2) -> None:
        self.error: BaseException | None = None
        self.failed = [False] * len(stages)
        self.queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=depth) for _ in stages]
        self.threads = [threading.Thread(target=self._run, args=(i, fn), daemon=True,
                                         name=f"cutover-drain-{name}")
                        for i, (name, fn) in enumerate(stages)]

    def __enter__(self) -> _Pipeline:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, index: int, fn: Callable[[Any], Any]) -> None:
        downstream = self.queues[index + 1] if index + 1 < len(self.queues) else None
        while True:
            item = self.queues[index].get()
            if item is _END:
                if downstream is not None:
                    downstream.put(_END)
                return
            if any(self.failed[index:]):
                continue  # this stage or one after it failed: do no more work here
            try:
                out = fn(item)
            except BaseException as exc:
                self.error = self.error or exc
                self.failed[index] = True
                continue
            if downstream is not None:
                downstream.put(out)

    def submit(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queues[0].put(item)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.queues[0].put(_END)
        for thread in self.threads:
            thread.join()
        if self.error is not None and exc is None:
            raise self.error


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _same_database(backend_url: str, control_url: str) -> bool:
    from cutover import adapters

    inner = adapters.split(backend_url)[1]
    return inner.split("?", 1)[0] == control_url.split("?", 1)[0]
