"""The worker's side of the RQ adapter: claim, record an outcome, release dependents, heartbeats,
recovery of jobs whose worker died, pauses, and RQ's own workers. Each state change that decides
who owns a job is one Lua script (``lua/``): claim_next, unclaim, finish, dependents, recover.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import time
import uuid
import zlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any, cast

import rq

from cutover import codec
from cutover.backend import Acceptor, NativeWorker, stalled_outcome
from cutover.errors import CutoverError
from cutover.record import JobRecord, JobState, utcnow
from cutover_rq import jobhash, keys, native
from cutover_rq.connection import RQConnection
from cutover_rq.decode import payload_kind
from cutover_rq.jobhash import (
    RESULT_FAILED,
    RESULT_SUCCESSFUL,
    STATUS,
    UNSERIALIZABLE,
    reply_text,
    ts,
)

_WIP_TTL = 86_400


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a worker's claim remembers until the outcome is recorded."""

    member: str  # the rq:wip member, "{id}:{execution id}"
    serializer: Any  # the job's own (its payload's) serializer: results are written with it
    started: float
    #: unclaim.lua's arguments after id and member: where the job was and the hash fields the
    #: claim overwrote (empty for a claim made by recovery: nothing to give back to)
    before: tuple[Any, ...] = ()


class RQWorking(RQConnection):
    """The worker's operations (RQBackend inherits them)."""

    def pause(self, queues: Collection[str] | None = None) -> None:
        with self._errors("pausing"):
            self.redis.sadd(keys.PAUSED, *(queues or ["*"]))

    def resume(self, queues: Collection[str] | None = None) -> None:
        with self._errors("resuming"):
            if queues is None:
                self.redis.delete(keys.PAUSED)
            else:
                self.redis.srem(keys.PAUSED, *queues)

    def paused(self) -> set[str]:
        with self._errors("reading pauses"):
            return {reply_text(m) for m in cast(set[bytes], self.redis.smembers(keys.PAUSED))}


    # -- working ---------------------------------------------------------------------------
    #: the hash fields claim_next.lua writes (unclaim.lua puts back what they were)
    _CLAIM_FIELDS = (b"status", b"started_at", b"worker_name", b"cutover_worker",
                     b"cutover_execution")

    def forget_skipped(self) -> None:
        """Offer the jobs this worker refused again (the phase gate calls it when its mode
        changes: a copy a dry run left in place runs in the next mode)."""
        with self._lock:
            self._skipped.clear()

    def claim(self, queues: Sequence[str] | None, worker: str,
              accept: Acceptor) -> JobRecord | None:
        """One Lua call picks, takes and reads the next runnable job (claim_next.lua): threads
        of one worker never race for the same job. A job this worker refuses is put back as it
        was (unclaim.lua) and skipped from then on."""
        with self._errors("claiming a job"):
            # Until a job is accepted or none is left: each refusal joins the skip list, so
            # this ends. (A bound here made a burst worker stop, and a claim filtered to one
            # job fail, behind 20 jobs it refuses: unknown tasks, quarantined payloads.)
            while True:
                now = time.time()
                execution = uuid.uuid4().hex
                with self._lock:
                    skip = list(self._skipped)
                got = self._script("claim_next")(args=[
                    now, worker, ts(utcnow()), now + _WIP_TTL, execution, len(skip), *skip,
                    *(queues or ())])
                if not got:
                    return None
                raw = cast(list[bytes], got)
                job_id, origin_place, score, prev, nxt = (reply_text(x) for x in raw[:5])
                h = {raw[i]: raw[i + 1] for i in range(5, len(raw) - 1, 2)}
                member = f"{job_id}:{execution}"
                record = jobhash.record(job_id, h)
                restore = [x for f in self._CLAIM_FIELDS if f in h for x in (f, h[f])]
                gone = [f for f in self._CLAIM_FIELDS if f not in h]
                before: tuple[Any, ...] = (origin_place, score, prev, nxt, len(restore) // 2,
                                           *restore, *gone)
                if accept(record) is not None or record.problem:
                    with self._lock:
                        self._skipped.add(job_id)
                    self._script("unclaim")(args=[job_id, member, *before])
                    continue
                serializer = (rq.serializers.JSONSerializer
                              if payload_kind(h.get(b"data", b"")) == "json"
                              else rq.serializers.DefaultSerializer)
                with self._lock:
                    self._claims[job_id] = Claim(member, serializer, now, before)
                return record.replace(state=JobState.STARTED)
        return None

    def unclaim(self, job: JobRecord, worker: str) -> bool:
        """Give back a job this worker claimed and has not run (the fence's claim could not be
        made): it goes back where it was, waiting, its hash as before the claim, no attempt
        used (unclaim.lua, only while the claim is still this execution's). False when it
        was not this worker's claim any more."""
        with self._lock:
            claim = self._claims.get(job.id)
        if claim is None or not claim.before:
            return False
        with self._errors(f"giving back job {job.id}"):
            done = bool(self._script("unclaim")(args=[job.id, claim.member, *claim.before]))
        if done:
            with self._lock:
                self._claims.pop(job.id, None)
        return done

    def _finish(self, job: JobRecord, worker: str, placement: str, score: float,
                fields: dict[str, Any], entry: dict[str, Any] | None) -> None:
        """Record an outcome (finish.lua): the job hash, its place, and for a final outcome an
        entry in RQ's result stream ``rq:results:{id}`` (rq.results.Result's format)."""
        with self._lock:
            claim = self._claims.pop(job.id, None)
        now = time.time()
        member = claim.member if claim else job.id
        stream: list[Any] = []
        if entry is not None:
            entry = {"type": entry.pop("type"), "worker_name": worker, **entry,
                     "execution_id": member.partition(":")[2]}
            if claim is not None:
                entry["execution_started_at"] = claim.started
            entry["execution_ended_at"] = now
            for key, value in entry.items():
                stream += [key, value]
        flat: list[Any] = []
        for key, value in fields.items():
            flat += [key, value]
        with self._errors(f"recording the outcome of job {job.id}"):
            self._script("finish")(args=[job.id, member, placement, score, now,
                                         len(stream) // 2, *stream, *flat])

    def _serializer_of(self, job_id: str) -> Any:
        with self._lock:
            claim = self._claims.get(job_id)
        return claim.serializer if claim else native.SERIALIZERS[self.serializer_name]

    # -- dependencies (a step of its own after finish: see lua/dependents.lua) --------------
    def _dependents(self, mode: str, ids: Sequence[str]) -> list[str]:
        with self._errors("queueing dependent jobs"):
            raw = self._script("dependents")(args=[mode, *ids, ts(utcnow())])
        return [reply_text(i) for i in raw]

    def release_dependents(self, job_id: str) -> list[str]:
        """Queue the deferred dependents of a job that ended whose dependencies are now met,
        as RQ's own worker does. Returns their ids."""
        return self._dependents("parent", [job_id])

    def release_deferred(self, job_ids: Sequence[str], *, check: bool = True) -> list[str]:
        """Queue these deferred jobs: when their dependencies are met on this Redis
        (``check``), or without a check (the drain found their parents done on either side).
        Returns the ids queued."""
        out: list[str] = []
        for start in range(0, len(job_ids), 500):
            out += self._dependents("check" if check else "force", job_ids[start:start + 500])
        return out

    def dependency_states(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """States from the hashes' status (HMGET in one pipeline): no LPOS in a queue list per
        parent, which would scan the list on the server for each one."""
        with self._errors("reading the states of parent jobs"):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hmget(keys.job(job_id), "status", "cutover_held", "data")
            answers = pipe.execute()
        out: dict[str, JobState] = {}
        for job_id, (status, held, data) in zip(job_ids, answers, strict=True):
            if held is not None:
                out[job_id] = JobState.HELD
            elif status is not None or data is not None:
                # A hash without a status is not a finished job: not done.
                out[job_id] = STATUS.get(reply_text(status or b""), JobState.QUEUED)
        return out

    def keep_waiting(self, waiters: Mapping[str, Sequence[str]]) -> None:
        """Name deferred jobs in the dependents sets of parents that left this Redis (what
        remove.lua keeps; an older version deleted it): then neither the cutover worker nor the
        drain takes a parent's absence for "finished and expired" (RQ's own worker still
        does, for a job with several parents: see docs/architecture.md)."""
        with self._errors("recording dependents"):
            pipe = self.redis.pipeline(transaction=False)
            for parent, children in waiters.items():
                if children:
                    pipe.sadd(keys.dependents(parent), *children)
            pipe.execute()

    def _sweep_deferred(self) -> list[str]:
        """Deferred jobs whose dependencies are met but that nobody queued (a worker that died
        between finishing a parent and releasing its dependents; jobs an older cutover worker
        finished without releasing them)."""
        released: list[str] = []
        for q in self._queues():
            deferred = keys.registry("deferred", q)
            ids = [reply_text(i) for i in cast(list[bytes], self.redis.zrange(deferred, 0, -1))]
            if ids:
                released += self.release_deferred(ids)
        return released

    def complete(self, job: JobRecord, worker: str, result: Any) -> None:
        try:
            stored = codec.dumps(result)
        except CutoverError:
            stored = codec.dumps(repr(result))
        entry: dict[str, Any] = {"type": RESULT_SUCCESSFUL}
        if result is not None:
            # As rq.results.Result.serialize: the job's serializer, base64; a value it cannot
            # serialize is stored as RQ's placeholder text.
            serializer = self._serializer_of(job.id)
            try:
                payload = serializer.dumps(result)
            except Exception:
                payload = serializer.dumps(UNSERIALIZABLE)
            entry["return_value"] = base64.b64encode(payload).decode()
        self._finish(job, worker, "finished", 0, {
            "status": "finished", "ended_at": ts(utcnow()), "cutover_result": stored,
            "cutover_attempts": job.attempts + 1, "cutover_error": "", "exc_info": ""}, entry)
        self.release_dependents(job.id)

    def fail(self, job: JobRecord, worker: str, error: str,
             retry_at: dt.datetime | None) -> None:
        """``error``: the traceback text, kept as RQ keeps it (``exc_info`` on the hash, and
        ``exc_string`` in the result stream for a final failure)."""
        fields: dict[str, Any] = {
            "ended_at": ts(utcnow()), "cutover_error": error,
            "exc_info": zlib.compress(error.encode()), "cutover_attempts": job.attempts + 1,
            "retries_left": max(job.max_attempts - job.attempts - 2, 0)}
        if retry_at is None:
            entry = {"type": RESULT_FAILED,
                     "exc_string": base64.b64encode(zlib.compress(error.encode())).decode()}
            self._finish(job, worker, "failed", 0, {**fields, "status": "failed"}, entry)
        elif retry_at <= utcnow():
            self._finish(job, worker, "queue", 0, {**fields, "status": "queued"}, None)
        else:
            # The exact time, not whole seconds: the cutover worker's claim takes scheduled jobs
            # once their score has passed, so a 1 s backoff retries after ~1 s (RQ's own
            # scheduler still looks once a second, at whole-second times).
            at = retry_at.timestamp()
            self._finish(job, worker, "scheduled", at,
                         {**fields, "status": "scheduled", "cutover_run_at": at}, None)
        if retry_at is None:  # failed for good: dependents that allow failures may go
            self.release_dependents(job.id)

    def heartbeat(self, worker: str) -> None:
        """The worker's heartbeat (read by ``recover_stalled``), and its entry in
        ``cutover:workers`` (read by ``native_workers``: a cutover worker that is no fleet
        member runs without the fence)."""
        now = time.time()
        with self._errors("sending a heartbeat"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(keys.heartbeat(worker), now, ex=_WIP_TTL)
            pipe.zadd(keys.CUTOVER_WORKERS, {worker: now})
            pipe.zremrangebyscore(keys.CUTOVER_WORKERS, "-inf", now - _WIP_TTL)
            pipe.execute()
        with self._lock:
            self._workers.add(worker)

    def worker_ids(self) -> list[str]:
        """The cutover workers this backend heartbeats for (a fleet member declares them, so
        that ``native_workers`` does not count it)."""
        with self._lock:
            return sorted(self._workers)

    def recover_stalled(self, older_than: float) -> list[str]:
        recovered: list[str] = []
        now = time.time()
        with self._errors("recovering stalled jobs"):
            for q in self._queues():
                for raw in cast(list[bytes], self.redis.zrange(keys.registry("wip", q), 0, -1)):
                    member = reply_text(raw)
                    job_id = member.split(":", 1)[0]
                    owner_raw = self.redis.hget(keys.job(job_id), "cutover_worker")
                    if not owner_raw:
                        continue  # RQ's own workers: RQ's maintenance handles them
                    owner = reply_text(owner_raw)
                    beat = cast(bytes | None, self.redis.get(keys.heartbeat(owner)))
                    if beat is not None and now - float(beat) < older_than:
                        continue
                    token = f"cutover-recovery-{uuid.uuid4().hex}"
                    if self._script("recover")(args=[job_id, member, owner, token]):
                        self._fail_stalled(job_id, member, owner)
                        recovered.append(job_id)
            # Stranded dependents are recovered too: queued once their dependencies are met.
            recovered += self._sweep_deferred()
        return recovered

    def _fail_stalled(self, job_id: str, member: str, dead: str) -> None:
        """Record the attempt of a job taken over from a dead worker as failed, through the
        worker's own fail path: RQ's failed registry and ``exc_info`` for a spent budget (then
        its dependents, as for any failure), else the retry at the job's backoff."""
        job = self.get(job_id)
        if job is None:
            return
        with self._lock:
            self._claims[job_id] = Claim(member, native.SERIALIZERS[self.serializer_name],
                                          time.time())
        error, retry_at = stalled_outcome(job)
        self.fail(job, dead, error, retry_at)

    def native_workers(self, exclude: Collection[str] = (),
                       stalled_after: float = 30.0) -> list[NativeWorker]:
        """Workers alive now that no fleet member declared (``exclude``): RQ's own (members of
        ``rq:workers`` whose ``rq:worker:<name>`` hash still exists: RQ lets it expire when the
        worker stops heartbeating), and cutover workers that heartbeat here within
        ``stalled_after`` seconds (every 10 s) but outside the fleet: started without the
        control plane (no --target, a --control without the control schema), they run jobs
        without the fence. This backend's own are not listed."""
        mine = set(self.worker_ids())
        with self._errors("listing cutover's workers"):
            beats = cast(list[tuple[bytes, float]], self.redis.zrangebyscore(
                keys.CUTOVER_WORKERS, time.time() - stalled_after, "+inf", withscores=True))
        outside: list[NativeWorker] = []
        for raw, seen in beats:
            name = reply_text(raw)
            if name in exclude or name in mine:
                continue
            at = dt.datetime.fromtimestamp(seen, dt.UTC).isoformat()
            outside.append(NativeWorker(name, f"a cutover worker outside the cut-over's fleet "
                                              f"(no control plane: started without --target "
                                              f"or with another --control?), last heartbeat "
                                              f"{at}"))
        with self._errors("listing RQ's workers"):
            names = sorted(reply_text(n) for n in self.redis.smembers(keys.WORKERS))
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hmget(keys.worker(name), "hostname", "pid", "queues", "last_heartbeat")
            found: list[NativeWorker] = []
            for name, fields in zip(names, pipe.execute(), strict=True):
                short = name.removeprefix(keys.WORKER_PREFIX)
                if short in exclude or name in exclude or not any(fields):
                    continue
                host, pid, queues, beat = (reply_text(f) if f is not None else "?" for f in fields)
                found.append(NativeWorker(short, f"host {host} pid {pid} queues {queues} "
                                                 f"last heartbeat {beat}"))
        return found + outside

