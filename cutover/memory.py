"""The in-memory backend: a first-class adapter, held to the same contract suite as the others.

``memory://NAME`` opens a store shared by every backend object with that name in the process, so
a producer and a worker in one test see the same jobs. ``memory://`` alone gives a private store.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from cutover.backend import (
    Acceptor,
    Capabilities,
    Departure,
    NativeWorker,
    Partition,
    StoreIdentity,
    TakeResult,
    TxHook,
    chunked,
    in_partition,
    stalled_outcome,
)
from cutover.errors import JobConflictError
from cutover.record import JobRecord, JobState, utcnow

_WAITING = (JobState.QUEUED, JobState.SCHEDULED, JobState.DEFERRED)


@dataclasses.dataclass
class _Store:
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
    jobs: dict[str, JobRecord] = dataclasses.field(default_factory=dict)
    order: dict[str, int] = dataclasses.field(default_factory=dict)
    keys: dict[str, str] = dataclasses.field(default_factory=dict)
    held: dict[str, tuple[str, JobState]] = dataclasses.field(default_factory=dict)
    paused: set[str] = dataclasses.field(default_factory=set)
    #: How jobs ended (written when they finish, cleared when the id is put again): what
    #: ``departures`` reports once a finished job is removed, like RQ's ``cutover:ended``.
    ended: dict[str, Departure] = dataclasses.field(default_factory=dict)
    seq: itertools.count[int] = dataclasses.field(default_factory=itertools.count)
    #: Native workers said to be alive (tests of the no-bypass check): id -> detail.
    natives: dict[str, str] = dataclasses.field(default_factory=dict)
    #: The exact time a retry is due (a record's run-at is whole seconds, rounded up; RQ's
    #: score and procrastinate's scheduled_at keep the exact time, and so does this).
    due: dict[str, dt.datetime] = dataclasses.field(default_factory=dict)
    #: Claimed jobs' workers, and each worker's last sign of life (time.monotonic()): what
    #: recover_stalled reads, as the other backends read their heartbeats.
    claims: dict[str, str] = dataclasses.field(default_factory=dict)
    beats: dict[str, float] = dataclasses.field(default_factory=dict)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


class InMemoryBackend:
    """Jobs in a dict, guarded by one lock. Supports every capability but dependencies."""

    name = "memory"
    capabilities = Capabilities(priority=True, scheduling=True, retries=True, results=True,
                                dependencies=False, job_key=True, shared=False)

    def __init__(self, url: str = "memory://") -> None:
        self._url = url
        store_name = url.split("://", 1)[1] if "://" in url else ""
        if store_name:
            with _STORES_LOCK:
                self._store = _STORES.setdefault(store_name, _Store())
            self._identity = StoreIdentity(f"memory:{store_name}", url)
        else:
            self._store = _Store()
            self._identity = StoreIdentity(f"memory:private:{id(self._store):x}", url)

    @property
    def url(self) -> str:
        return self._url

    def identity(self) -> StoreIdentity:
        """``memory:NAME`` (every backend of this process opened with that name), or a private
        store of its own."""
        return self._identity

    def __repr__(self) -> str:
        return f"InMemoryBackend({self._url!r})"

    def cannot_hold(self, record: JobRecord) -> list[str]:
        """Nothing: a dict holds any record."""
        return []

    # -- producing -------------------------------------------------------------------------
    def enqueue(self, records: Sequence[JobRecord]) -> list[str]:
        out: list[str] = []
        now = utcnow()
        with self._store.lock:
            for record in records:
                if record.id in self._store.jobs:
                    out.append(record.id)
                    continue
                live = self._live_key_holder(record.job_key)
                if live is not None:
                    out.append(live)
                    continue
                state = (JobState.SCHEDULED if record.run_at and record.run_at > now
                         else JobState.QUEUED)
                self._insert(record.replace(state=state, origin=record.origin or self.name,
                                            created_at=record.created_at or now, updated_at=now))
                out.append(record.id)
        return out

    def key_holders(self, job_keys: Sequence[str]) -> dict[str, str]:
        """``{job_key: id}`` of the live jobs holding ``job_keys`` (enqueue's rule)."""
        with self._store.lock:
            found = {k: self._live_key_holder(k) for k in job_keys}
        return {k: v for k, v in found.items() if v is not None}

    def _live_key_holder(self, job_key: str | None) -> str | None:
        if job_key is None:
            return None
        holder = self._store.keys.get(job_key)
        if holder is not None and self._store.jobs[holder].state.live:
            return holder
        return None

    def _insert(self, record: JobRecord) -> None:
        self._store.jobs[record.id] = record
        self._store.due.pop(record.id, None)
        self._store.order[record.id] = next(self._store.seq)
        self._store.ended.pop(record.id, None)  # a new stay: an earlier end no longer counts
        if record.job_key is not None and record.state.live:
            self._store.keys[record.job_key] = record.id

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._store.lock:
            return self._store.jobs.get(job_id)

    def snapshot(self, *, states: Collection[JobState] | None = None,
                 queues: Collection[str] | None = None,
                 batch_size: int = 1000) -> Iterator[JobRecord]:
        with self._store.lock:
            records = [r for r in self._store.jobs.values()
                       if (states is None or r.state in states)
                       and (queues is None or r.queue in queues)]
        yield from records

    def batches(self, *, states: Collection[JobState] | None = None,
                queues: Collection[str] | None = None, batch_size: int = 1000,
                partition: Partition | None = None) -> Iterator[list[JobRecord]]:
        records = self.snapshot(states=states, queues=queues)
        if partition is None:
            yield from chunked(records, batch_size)
            return
        for batch in chunked(records, batch_size):  # every window, even an empty share
            yield [r for r in batch if in_partition(r.id, partition)]

    def counts(self, queues: Collection[str] | None = None) -> dict[str, dict[JobState, int]]:
        out: dict[str, dict[JobState, int]] = {}
        with self._store.lock:
            for r in self._store.jobs.values():
                if queues is None or r.queue in queues:
                    per = out.setdefault(r.queue, dict.fromkeys(JobState, 0))
                    per[r.state] += 1
        return out

    # -- moving ----------------------------------------------------------------------------
    def take(self, job_ids: Sequence[str], owner: str, *, tx_hook: TxHook | None = None,
             fetch: bool = True) -> TakeResult:
        result = TakeResult()
        with self._store.lock:
            for job_id in job_ids:
                record = self._store.jobs.get(job_id)
                if record is None:
                    result.refused[job_id] = "missing"
                elif record.state is JobState.HELD:
                    holder = self._store.held[job_id][0]
                    if holder == owner:
                        result.taken.append(record)
                    else:
                        result.refused[job_id] = f"held by {holder}"
                elif record.state in _WAITING:
                    self._store.held[job_id] = (owner, record.state)
                    held = record.replace(state=JobState.HELD, updated_at=utcnow(),
                                          holder=owner)
                    self._store.jobs[job_id] = held
                    result.taken.append(held)
                else:
                    result.refused[job_id] = record.state.value
            if tx_hook is not None:
                tx_hook(None)
        result.taken_ids = [r.id for r in result.taken]
        return result

    def give_back(self, job_ids: Sequence[str], owner: str) -> int:
        moved = 0
        with self._store.lock:
            for job_id in job_ids:
                held = self._store.held.get(job_id)
                if held is None or held[0] != owner:
                    continue
                del self._store.held[job_id]
                record = self._store.jobs[job_id]
                self._store.jobs[job_id] = record.replace(state=held[1], updated_at=utcnow(),
                                                          holder=None)
                moved += 1
        return moved

    def put(self, records: Sequence[JobRecord], *,
            tx_hook: TxHook | None = None) -> list[str]:
        inserted: list[str] = []
        with self._store.lock:
            for record in records:
                existing = self._store.jobs.get(record.id)
                if existing is not None:
                    if existing.digest() != record.digest():
                        raise JobConflictError(
                            "a different job with this id exists already", job_id=record.id,
                            fields=sorted(existing.differences(record)))
                    continue
                state = record.state
                if state is JobState.HELD:
                    state = JobState.SCHEDULED if record.run_at else JobState.QUEUED
                if state is JobState.QUEUED and record.run_at and record.run_at > utcnow():
                    state = JobState.SCHEDULED
                self._insert(record.replace(state=state, updated_at=utcnow(), holder=None))
                inserted.append(record.id)
            if tx_hook is not None:
                tx_hook(None)
        return inserted

    def remove(self, job_ids: Sequence[str], *, tx_hook: TxHook | None = None) -> int:
        removed = 0
        with self._store.lock:
            for job_id in job_ids:
                record = self._store.jobs.pop(job_id, None)
                if record is None:
                    continue
                removed += 1
                self._store.order.pop(job_id, None)
                self._store.held.pop(job_id, None)
                if record.job_key and self._store.keys.get(record.job_key) == job_id:
                    del self._store.keys[record.job_key]
            if tx_hook is not None:
                tx_hook(None)
        return removed

    def departures(self, job_ids: Sequence[str]) -> dict[str, Departure]:
        with self._store.lock:
            return {job_id: self._store.ended[job_id] for job_id in job_ids
                    if job_id in self._store.ended and job_id not in self._store.jobs}

    def pause(self, queues: Collection[str] | None = None) -> None:
        with self._store.lock:
            self._store.paused.update(queues or {"*"})

    def resume(self, queues: Collection[str] | None = None) -> None:
        with self._store.lock:
            if queues is None:
                self._store.paused.clear()
            else:
                self._store.paused.difference_update(queues)

    def paused(self) -> set[str]:
        with self._store.lock:
            return set(self._store.paused)

    # -- working ---------------------------------------------------------------------------
    def claim(self, queues: Sequence[str] | None, worker: str,
              accept: Acceptor) -> JobRecord | None:
        now = utcnow()
        with self._store.lock:
            paused = self._store.paused
            if "*" in paused:
                return None
            candidates = [
                r for r in self._store.jobs.values()
                if (r.state is JobState.QUEUED
                    or (r.state is JobState.SCHEDULED and r.run_at is not None
                        and self._store.due.get(r.id, r.run_at) <= now))
                and (queues is None or r.queue in queues) and r.queue not in paused]
            candidates.sort(key=lambda r: (-r.priority, self._store.order[r.id]))
            for record in candidates:
                if accept(record) is not None or record.problem:
                    continue
                started = record.replace(state=JobState.STARTED, updated_at=now)
                self._store.jobs[record.id] = started
                self._store.due.pop(record.id, None)
                self._store.claims[record.id] = worker
                self._store.beats[worker] = time.monotonic()
                return started
        return None

    def unclaim(self, job: JobRecord, worker: str) -> bool:
        """Give back a job ``worker`` claimed and has not run: waiting again as it was."""
        with self._store.lock:
            current = self._store.jobs.get(job.id)
            if (current is None or current.state is not JobState.STARTED
                    or self._store.claims.get(job.id) != worker):
                return False
            del self._store.claims[job.id]
            waiting = JobState.SCHEDULED if current.run_at is not None else JobState.QUEUED
            self._store.jobs[job.id] = current.replace(state=waiting)
            return True

    def complete(self, job: JobRecord, worker: str, result: Any) -> None:
        self._finish(job, JobState.FINISHED, result=result, error=None)

    def fail(self, job: JobRecord, worker: str, error: str,
             retry_at: dt.datetime | None) -> None:
        if retry_at is None:
            self._finish(job, JobState.FAILED, result=None, error=error)
            return
        with self._store.lock:
            current = self._store.jobs.get(job.id)
            if current is None:
                return
            self._store.jobs[job.id] = current.replace(
                state=JobState.SCHEDULED, run_at=retry_at, attempts=current.attempts + 1,
                error=error, updated_at=utcnow())
            self._store.due[job.id] = retry_at
            self._store.order[job.id] = next(self._store.seq)

    def _finish(self, job: JobRecord, state: JobState, *, result: Any, error: str | None) -> None:
        with self._store.lock:
            current = self._store.jobs.get(job.id)
            if current is None:
                return
            self._store.jobs[job.id] = current.replace(
                state=state, attempts=current.attempts + 1, result=result, error=error,
                updated_at=utcnow())
            self._store.ended[job.id] = Departure(
                finished=True, status="succeeded" if state is JobState.FINISHED else "failed",
                evidence="the memory store's record of ended jobs", at=utcnow())
            if current.job_key and self._store.keys.get(current.job_key) == job.id:
                del self._store.keys[current.job_key]

    def recover_stalled(self, older_than: float) -> list[str]:
        """A worker thread that stopped beating (tests declare one dead by never beating)."""
        now = time.monotonic()
        stalled: list[JobRecord] = []
        with self._store.lock:
            for job_id, worker in list(self._store.claims.items()):
                current = self._store.jobs.get(job_id)
                if current is None or current.state is not JobState.STARTED:
                    del self._store.claims[job_id]  # its outcome was recorded
                    continue
                if now - self._store.beats.get(worker, float("-inf")) >= older_than:
                    del self._store.claims[job_id]
                    stalled.append(current)
            for job in stalled:
                error, retry_at = stalled_outcome(job)
                self.fail(job, "", error, retry_at)
        return [job.id for job in stalled]

    def heartbeat(self, worker: str) -> None:
        with self._store.lock:
            self._store.beats[worker] = time.monotonic()

    def native_workers(self, exclude: Collection[str] = ()) -> list[NativeWorker]:
        """The native workers a test declared with :meth:`declare_native_worker`."""
        with self._store.lock:
            return [NativeWorker(i, d) for i, d in sorted(self._store.natives.items())
                    if i not in exclude]

    def declare_native_worker(self, worker_id: str, detail: str = "",
                              alive: bool = True) -> None:
        """Pretend a worker of the backend's own library is (or no longer is) alive."""
        with self._store.lock:
            if alive:
                self._store.natives[worker_id] = detail
            else:
                self._store.natives.pop(worker_id, None)

    def close(self) -> None:
        return None

    def flush(self) -> None:
        """Forget every job (tests)."""
        with self._store.lock:
            self._store.jobs.clear()
            self._store.order.clear()
            self._store.keys.clear()
            self._store.held.clear()
            self._store.paused.clear()
            self._store.ended.clear()
            self._store.claims.clear()
            self._store.beats.clear()
