"""RQ behind the one interface: the RQBackend class (entry point ``rq``).

It delegates to the adapter's modules, one seam each:

- keys.py: every Redis key name (RQ's and cutover's)
- jobhash.py: RQ's job hash read into a record and written from one (RQ's ``Job`` class builds
  it, so plain RQ workers run what this adapter puts); decode.py and native.py beneath it
- location.py: where a job is (queue lists, registries, held, orphans, the snapshot index)
- connection.py: URL, errors, Lua scripts, queue serializers; working.py: the worker's side

Every state change that decides who owns a job is one Lua script (``lua/``): take, give back,
claim, finish, remove, recover.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import rq

from cutover.backend import (
    Capabilities,
    Departure,
    Partition,
    TakeResult,
    TxHook,
    chunked,
    in_partition,
)
from cutover.errors import JobConflictError, JobError, UnsupportedValueError
from cutover.limits import size_limits
from cutover.record import JobRecord, JobState, utcnow
from cutover_rq import jobhash, keys, location, native
from cutover_rq.jobhash import PLACEMENT
from cutover_rq.location import ListIndex
from cutover_rq.working import RQWorking

_WAITING_STATES = {JobState.QUEUED, JobState.SCHEDULED, JobState.DEFERRED, JobState.HELD,
                   JobState.FAILED}
_DEFAULT_RESULT_TTL = 500
_DEFAULT_FAILURE_TTL = 31_536_000
_VALUE_MAX = 512 * 2**20  # Redis's largest string value (the job's data field)


#: RQ statuses whose job holds its key (lua/enqueue.lua's ``live``).
_LIVE = frozenset({"queued", "scheduled", "deferred", "started", "created", "ready_to_enqueue",
                   "rate_limited"})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RQBackend(RQWorking):
    """RQ (rq 2.x and 3.x) on Redis.

    URL: ``redis://[:password@]host:port/db``, ``rediss://...`` or ``unix:///path?db=N``.
    Payloads of either serializer are read; a job is written in the serializer it remembers
    (``record.native``), else in its queue's (learned from the queue's jobs), else in the URL's
    ``serializer=json|pickle`` (default pickle): match what your RQ workers use.
    """

    name = "rq"
    capabilities = Capabilities(priority=False, scheduling=True, retries=True, results=True,
                                dependencies=True, job_key=True)


    # -- limits ----------------------------------------------------------------------------
    def cannot_hold(self, record: JobRecord) -> list[str]:
        """What RQ cannot hold (checked by audit before anything moves): ids RQ's own
        validator refuses (rq 3: letters, digits, ``_`` and ``-``; always no ``:``, which RQ's
        key names use as a separator), an empty queue name, retry waits RQ's ``Retry`` refuses
        (negative, not finite), a job larger than a Redis value."""
        out = []
        validate = getattr(rq.job, "validate_job_id", None)
        if validate is not None:
            try:
                validate(record.id)
            except (TypeError, ValueError) as exc:
                out.append(f"job id {record.id!r}: RQ refuses it ({exc})")
        elif not record.id or ":" in record.id:
            out.append(f"job id {record.id!r}: RQ job ids are not empty and hold no ':'")
        if not record.queue:
            out.append("queue name is empty")
        if not all(math.isfinite(i) and i >= 0 for i in record.retry_intervals):
            out.append("a retry wait is negative or not finite (RQ's Retry refuses it)")
        if record.queue:
            with self._errors("learning a queue's serializer"):
                if native.serializer_for(record, self.queue_serializer) == "json":
                    out += native.json_problems(record)
        return out + size_limits(record, "a Redis value", _VALUE_MAX)


    def _write_many(self, writes: Sequence[tuple[JobRecord, JobState]], *, moved: bool = False
                    ) -> list[tuple[str, str]]:
        """Create RQ jobs, never overwriting: the enqueue script once per job, all in one
        pipeline (run in order on the server, so a job key taken by an earlier record of the
        batch is seen by a later one). Returns (outcome, id) per record. ``moved`` marks the
        jobs (``cutover_moved``) so that finishing them leaves a record in ``cutover:ended``."""
        if not writes:
            return []
        script = self._script("enqueue")
        # One job: one EVALSHA (a pipeline would first ask SCRIPT EXISTS, a second round trip).
        pipe: Any = self.redis if len(writes) == 1 else self.redis.pipeline(transaction=False)
        answers: list[Any] = []
        for record, state in writes:
            if state is JobState.QUEUED and record.run_at and record.run_at > utcnow():
                state = JobState.SCHEDULED
            if state not in PLACEMENT:
                raise JobError(f"a {state.value} job cannot be written to RQ", job_id=record.id)
            placement, status = PLACEMENT[state]
            score: float = time.time()
            if state is JobState.SCHEDULED:
                score = (record.run_at or utcnow()).timestamp()
            elif state is JobState.FINISHED:
                score += _DEFAULT_RESULT_TTL
            elif state is JobState.FAILED:
                score += _DEFAULT_FAILURE_TTL
            flat: list[Any] = ["cutover_moved", 1] if moved else []
            mapping = jobhash.mapping(record, status, self.redis, self.queue_serializer,
                                      self.name)
            for key, value in mapping.items():
                flat += [key, value]
            answers.append(script(args=[record.id, record.queue, placement,
                                        int(score) if placement == "scheduled" else score,
                                        record.job_key or "", *flat], client=pipe))
        if pipe is not self.redis:
            answers = pipe.execute()
        return [(outcome.decode(), job_id.decode()) for outcome, job_id in answers]


    # -- producing -------------------------------------------------------------------------
    def enqueue(self, records: Sequence[JobRecord]) -> list[str]:
        """New jobs. A job for a JSON queue whose arguments JSON cannot hold is refused
        (UnsupportedValueError, nothing written): RQ's JSON workers would get something else."""
        out: list[str] = []
        with self._errors("enqueueing"):
            for record in records:
                if native.serializer_for(record, self.queue_serializer) == "json":
                    problems = native.json_problems(record)
                    if problems:
                        raise UnsupportedValueError(problems[0], job_id=record.id,
                                                    task=record.task)
            writes = [(record.replace(origin=record.origin or self.name), JobState.QUEUED)
                      for record in records]
            out = [job_id for _, job_id in self._write_many(writes)]
        return out

    def key_holders(self, job_keys: Sequence[str]) -> dict[str, str]:
        """``{job_key: id}`` of the live jobs holding ``job_keys``, by lua/enqueue.lua's rule
        (waiting, scheduled, deferred, started, or held by a drain). Two round trips."""
        wanted = sorted(set(job_keys))
        if not wanted:
            return {}
        with self._errors("looking up job keys"):
            pipe = self.redis.pipeline(transaction=False)
            for key in wanted:
                pipe.get(keys.job_key(key))
            held = {k: _text(h) for k, h in zip(wanted, pipe.execute(), strict=True)
                    if h is not None}
            if not held:
                return {}
            pipe = self.redis.pipeline(transaction=False)
            for holder in held.values():
                pipe.hmget(keys.job(holder), "status", "cutover_held")
            states = pipe.execute()
        return {k: h for (k, h), (status, mark) in zip(held.items(), states, strict=True)
                if mark is not None or (status is not None and _text(status) in _LIVE)}

    def put(self, records: Sequence[JobRecord], *,
            tx_hook: TxHook | None = None) -> list[str]:
        """Written in one pipeline of Lua calls (one round trip a batch). A record that meets
        an existing job raises JobConflictError once the others are written, unless it is the
        same job (then it is left as it is)."""
        inserted: list[str] = []
        with self._errors("putting jobs"):
            writes: list[tuple[JobRecord, JobState]] = []
            for record in records:
                state = JobState.QUEUED if record.state is JobState.HELD else record.state
                if state is JobState.STARTED:
                    raise JobError("a running job cannot be put; let it finish first",
                                   job_id=record.id)
                writes.append((record, state))
            conflict: JobConflictError | None = None
            for (record, _), (outcome, _) in zip(writes, self._write_many(writes, moved=True),
                                                 strict=True):
                if outcome == "created":
                    inserted.append(record.id)
                    continue
                if outcome == "key":
                    conflict = conflict or JobConflictError(
                        f"job key {record.job_key!r} is held by another live job",
                        job_id=record.id)
                    continue
                existing = self.get(record.id)
                if existing is not None and existing.digest() != record.digest():
                    conflict = conflict or JobConflictError(
                        "a different job with this id exists already", job_id=record.id,
                        fields=sorted(existing.differences(record)))
                elif existing is not None and record.state.live and not existing.state.live:
                    # Same content, but it ended (RQ's worker leaves the attempt count alone):
                    # a job still to run is not that one (a producer used the id again).
                    conflict = conflict or JobConflictError(
                        f"a job with this id exists already and has ended "
                        f"({existing.state.value})", job_id=record.id, fields=["state"])
            if conflict is not None:
                raise conflict
        if tx_hook is not None:
            tx_hook(None)
        return inserted

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self, *, states: Collection[JobState] | None = None,
                 queues: Collection[str] | None = None,
                 batch_size: int = 1000) -> Iterator[JobRecord]:
        with self._errors("reading a snapshot"):
            batch: list[str] = []
            lists: dict[str, ListIndex] = {}
            for key in self.redis.scan_iter(match=keys.JOB_PATTERN, count=batch_size):
                job_id = key[len(keys.JOB_PREFIX):].decode("utf-8", "replace")
                if not job_id or ":" in job_id:
                    continue  # rq:job:{id}:dependents, rq:job::{id}:dependencies
                batch.append(job_id)
                if len(batch) >= batch_size:
                    yield from self._snapshot_batch(batch, states, queues, lists)
                    batch = []
            if batch:
                yield from self._snapshot_batch(batch, states, queues, lists)


    def _snapshot_batch(self, ids: list[str], states: Collection[JobState] | None,
                        queues: Collection[str] | None,
                        lists: dict[str, ListIndex] | None = None) -> Iterator[JobRecord]:
        return location.snapshot_batch(self.redis, ids, states, queues, lists)

    def batches(self, *, states: Collection[JobState] | None = None,
                queues: Collection[str] | None = None, batch_size: int = 1000,
                partition: Partition | None = None) -> Iterator[list[JobRecord]]:
        """Waiting (and failed) jobs are read where RQ keeps them, in order (queue lists head
        first, then the scheduled, deferred, held and failed registries), so that taking a batch
        from the head of a list is cheap; the place is re-anchored after each batch, so jobs the
        consumer took (or left) are neither skipped nor read twice. Other states are read by a
        SCAN of the job hashes.

        With a partition, every process reads the same windows of ids (a window is only read
        once the jobs of the one before were taken or left: the drain's processes wait for each
        other), and reads the hashes of its own share of each window."""
        wanted = set(states) if states is not None else set(JobState)
        if not wanted <= _WAITING_STATES:
            for batch in chunked(self.snapshot(states=states, queues=queues,
                                               batch_size=batch_size), batch_size):
                yield [r for r in batch if in_partition(r.id, partition)]
            return
        with self._errors("reading a snapshot"):
            names = [q for q in self._queues() if queues is None or q in queues]
        for key, is_list in location.places(names, wanted):
            walk = location.walk(self.redis, key, is_list, batch_size, partition, wanted)
            while True:
                with self._errors("reading a snapshot"):
                    records = next(walk, None)
                if records is None:
                    break
                yield records

    def counts(self, queues: Collection[str] | None = None) -> dict[str, dict[JobState, int]]:
        with self._errors("counting jobs"):
            return location.counts(self.redis, queues)

    # -- moving ----------------------------------------------------------------------------
    def take(self, job_ids: Sequence[str], owner: str, *, tx_hook: TxHook | None = None,
             fetch: bool = True) -> TakeResult:
        result = TakeResult()
        if not job_ids:
            if tx_hook is not None:
                tx_hook(None)
            return result
        with self._errors("taking jobs"):
            raw = self._script("take")(args=[owner, time.time(), *job_ids])
            taken = []
            for i in range(0, len(raw), 2):
                job_id, outcome = raw[i].decode(), raw[i + 1].decode()
                if outcome == "taken":
                    taken.append(job_id)
                else:
                    result.refused[job_id] = outcome
            result.taken_ids = taken
            if taken and fetch:
                result.taken = list(self._snapshot_batch(taken, None, None))
        if tx_hook is not None:
            tx_hook(None)
        return result

    def give_back(self, job_ids: Sequence[str], owner: str) -> int:
        if not job_ids:
            return 0
        with self._errors("giving jobs back"):
            moved = int(self._script("give_back")(args=[owner, *job_ids]))
        # A deferred job whose parents RQ's worker finished while it was held (take.lua took it
        # out of their dependents sets, so RQ did not release it): queued now, as RQ would have.
        self._dependents("check", job_ids)
        return moved

    def remove(self, job_ids: Sequence[str], *, tx_hook: TxHook | None = None) -> int:
        removed = 0
        if job_ids:
            with self._errors("removing jobs"):
                removed = int(self._script("remove")(args=list(job_ids)))
        if tx_hook is not None:
            tx_hook(None)
        return removed

    def departures(self, job_ids: Sequence[str]) -> dict[str, Departure]:
        """What Redis still remembers of jobs whose hash is gone: ``cutover:ended`` (written by
        the cutover worker when a job cutover moved here ends; never expires), else RQ's own
        traces, which a plain RQ worker leaves and which expire with the job's result or
        failure TTL: the last entry of ``rq:results:{id}``, membership of a finished or failed
        registry (until RQ's cleanup). All are cleared when a job with the same id is
        created again (enqueue.lua)."""
        if not job_ids:
            return {}
        with self._errors("reading departures"):
            return location.departures(self.redis, job_ids)
