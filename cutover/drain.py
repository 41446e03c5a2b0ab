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
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from cutover import faults
from cutover.audit import JobClass, classify
from cutover.backend import QueueBackend
from cutover.control import ControlPlane, backend_key
from cutover.errors import JobConflictError, PreconditionError
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


@dataclasses.dataclass
class DrainReport:
    moved: int = 0
    recovered: int = 0
    left: dict[str, list[dict[str, str]]] = dataclasses.field(default_factory=dict)
    running: list[str] = dataclasses.field(default_factory=list)
    planned: dict[str, int] = dataclasses.field(default_factory=dict)
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
        self.source_key, self.target_key = backend_key(source_url), backend_key(target_url)
        self.control = control
        self.registry = registry
        self.options = options
        self.progress = progress or (lambda done, total: None)
        self.owner = f"cutover-drain:{self.target_key}"
        self.run_id = f"drain-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.report = DrainReport(run_id=self.run_id)
        self._done = 0
        self._total = 0
        self._left_ids: set[str] = set()
        self._inflight: set[str] = set()  # handed to the mover, not finished yet
        self._inflight_lock = threading.Lock()
        # The ledger shares a backend's transaction only when it lives in that backend's database.
        self._shared_source = _same_database(source_url, control.url)
        self._shared_target = _same_database(target_url, control.url)

    # -- planning --------------------------------------------------------------------------
    def _states(self) -> list[JobState]:
        """What a drain reads: waiting jobs to move, and deferred and failed ones to move or to
        report as left in place."""
        return [*WAITING, JobState.DEFERRED, JobState.FAILED]

    def _verdict(self, record: JobRecord) -> tuple[JobRecord, JobClass, str]:
        normal = self.registry.normalize(record)
        verdict = classify(normal, self.registry, self.target.capabilities,
                           include_failed=self.options.include_failed, owner=self.owner)
        return normal, verdict.job_class, verdict.reason

    def plan(self) -> dict[str, int]:
        """What a run would do (changes nothing)."""
        planned: dict[str, int] = {}
        for batch in self.source.batches(states=self._states(), queues=self.options.queues,
                                         batch_size=self.options.batch_size):
            for record in batch:
                cls = self._verdict(record)[1].value
                planned[cls] = planned.get(cls, 0) + 1
        running = sum(per[JobState.STARTED] for per in self.source.counts(
            self.options.queues).values())
        if running:
            planned["running"] = running
        return planned

    # -- running ---------------------------------------------------------------------------
    def run(self) -> DrainReport:
        started = time.monotonic()
        if self.options.dry_run:
            self.report.planned = self.plan()
            return self.report
        if not self.control.lock_pair(self.source_key, self.target_key):
            raise PreconditionError("another drain between these two backends is running",
                                    source=self.source_key, target=self.target_key)
        state = "failed"
        try:
            self.control.start_run(self.run_id, "drain", self.source_key, self.target_key,
                                   dataclasses.asdict(self.options))
            self._total = sum(per[s] for per in self.source.counts(self.options.queues).values()
                              for s in WAITING)
            self._recover()
            self._pass()
            self._wait_for_running()
            state = "stopped" if self.report.stopped else "finished"
        finally:
            self.report.seconds = time.monotonic() - started
            try:
                self.control.finish_run(self.run_id, state, self.report.moved,
                                        self.report.left_count)
            finally:
                self.control.unlock_pair(self.source_key, self.target_key)
        return self.report

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
                self._put(list(held.values()), recovered=True)
                self._release(list(held))
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

    def _pass(self) -> None:
        while True:
            moved_before = self.report.moved
            with _Mover(self) as mover:
                for batch in self.source.batches(states=self._states(),
                                                 queues=self.options.queues,
                                                 batch_size=self.options.batch_size):
                    if self._switch() == "stop":
                        self.report.stopped = True
                        return
                    t0 = time.monotonic()
                    mover.submit(self._prepare(batch), len(batch))
                    self._throttle(len(batch), time.monotonic() - t0)
            # A second pass only when the first moved something: catches jobs that became
            # waiting meanwhile (retries, jobs producers added) without looping forever.
            if self.report.moved == moved_before:
                return

    def _prepare(self, batch: Sequence[JobRecord]) -> tuple[list[JobRecord], list[JobRecord]]:
        """Classify a batch and take its movable jobs (the reading side of the pipeline: the
        take happens before the next batch is read, so the source keeps its place)."""
        movable: list[JobRecord] = []
        failed: list[JobRecord] = []
        with self._inflight_lock:
            batch = [r for r in batch if r.id not in self._inflight]
        for raw in batch:
            record, cls, reason = self._verdict(raw)
            if cls.moves or (cls is JobClass.FAILED and self.options.include_failed):
                (failed if record.state is JobState.FAILED else movable).append(record)
            elif record.id not in self._left_ids:
                self._left_ids.add(record.id)
                self.report.left.setdefault(cls.value, []).append(
                    {"id": record.id, "task": record.task, "queue": record.queue,
                     "reason": reason})
        ready: list[JobRecord] = []
        if movable:
            by_id = {r.id: r for r in movable}
            taken = self.source.take(list(by_id), self.owner, fetch=False)
            faults.point("after_take")
            ready = [by_id[i] for i in taken.taken_ids if i in by_id]
        with self._inflight_lock:
            self._inflight.update(r.id for r in ready)
            self._inflight.update(r.id for r in failed)
        return ready, failed

    def _finish_batch(self, work: tuple[list[JobRecord], list[JobRecord]], size: int) -> None:
        """The writing side: put on the target with the ledger rows, then release."""
        ready, failed = work
        try:
            if ready or failed:
                # Failed jobs are not taken (no worker starts them), otherwise the same path.
                self._move(ready + failed)
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(r.id for r in ready)
                self._inflight.difference_update(r.id for r in failed)
        self._done += size
        self.progress(self.report.moved, max(self._total, self._done))

    def _move(self, ready: list[JobRecord]) -> None:
        if not self._shared_target:
            # The put cannot share the ledger's transaction: say first what is about to move.
            self.control.record(ready, state="moving", source=self.source_key,
                                target=self.target_key, run_id=self.run_id)
            faults.point("after_intent")
        moved = self._put(ready)
        faults.point("after_put")
        self._release([r.id for r in moved])
        faults.point("after_release")

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

        def mark(conn: Any) -> None:
            if conn is not None:  # the target's own transaction: the rows commit with the jobs
                self.control.record(ready, state="moved", source=self.source_key,
                                    target=self.target_key, run_id=self.run_id, conn=conn)
            else:
                self.control.mark([r.id for r in ready], state="moved", source=self.source_key,
                                  target=self.target_key)

        try:
            # In the target's own transaction when it shares the control plane's database;
            # otherwise only once the put has committed (never "moved" before it is).
            self.target.put(ready, tx_hook=mark if self._shared_target else None)
        except JobConflictError:
            return self._put_one_by_one(ready)
        if not self._shared_target:
            mark(None)
        if not recovered:
            self.report.moved += len(ready)
        else:
            self.report.recovered += len(ready)
        return ready

    def _put_one_by_one(self, records: list[JobRecord]) -> list[JobRecord]:
        """A batch hit an id the target already has: sort ours (an earlier, interrupted run put
        it, and a worker may have run it since) from a real collision (left in place)."""
        done: list[JobRecord] = []
        ours = {i for i, (_, src, tgt) in self.control.states([r.id for r in records]).items()
                if src == self.source_key and tgt == self.target_key}
        for record in records:
            try:
                self.target.put([record])
            except JobConflictError as exc:
                if record.id in ours and self.target.get(record.id) is not None:
                    done.append(record)  # an earlier run put it; a worker may have run it since
                    continue
                self.source.give_back([record.id], self.owner)
                self.report.left.setdefault("id_conflict", []).append(
                    {"id": record.id, "task": record.task, "queue": record.queue,
                     "reason": str(exc)})
                self.control.fail(self.run_id, [(record.id, self.target_key, "id_conflict",
                                                 str(exc))])
                continue
            done.append(record)
        self.control.record(done, state="moved", source=self.source_key, target=self.target_key,
                            run_id=self.run_id)
        self.report.moved += len(done)
        return done

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
        """The operator's switch: run, pause (wait here) or stop."""
        value = self.control.switch(self.run_id)
        if value == "pause":
            log.warning("drain %s paused by the operator (cutover drain --signal resume)",
                        self.run_id)
            while value == "pause":
                time.sleep(0.5)
                value = self.control.switch(self.run_id)
            log.warning("drain %s: %s", self.run_id, "resumed" if value == "run" else "stopping")
        return value

    def _throttle(self, n: int, took: float) -> None:
        if self.options.rate:
            wait = n / self.options.rate - took
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
            self._pass()


class _Mover:
    """A thread that puts and releases taken batches while the next batch is read and taken:
    the target's and the source's round trips overlap. At most two batches wait; an error on
    either side stops both, and every batch handed over is finished (or left held, for the next
    run to finish) before the error is raised."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain
        self.queue: queue.Queue[tuple[tuple[list[JobRecord], list[JobRecord]], int] | None] = \
            queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cutover-drain-mover",
                                       daemon=True)

    def __enter__(self) -> _Mover:
        self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain the queue; held jobs are finished by the next run
            try:
                self.drain._finish_batch(*item)
            except BaseException as exc:
                self.error = exc

    def submit(self, work: tuple[list[JobRecord], list[JobRecord]], size: int) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((work, size))

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc is None:
            raise self.error


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _same_database(backend_url: str, control_url: str) -> bool:
    from cutover import adapters

    inner = adapters.split(backend_url)[1]
    return inner.split("?", 1)[0] == control_url.split("?", 1)[0]
