"""RQ behind the one interface.

Jobs are read straight from RQ's Redis keys (never with ``Job.fetch``, which unpickles ``meta`` and
``result`` with the unrestricted pickle) and written in RQ's own hash format, built by RQ's ``Job``
class, so plain RQ workers can run what this adapter puts. Every state change that decides who
owns a job is one Lua script (``lua/``): take, give back, claim, finish, remove, recover.

Cutover-only facts live in extra hash fields that RQ leaves alone: ``cutover_priority``,
``cutover_attempts``, ``cutover_max_attempts``, ``cutover_retry_intervals``, ``cutover_job_key``,
``cutover_run_at``, ``cutover_error``, ``cutover_result``, ``cutover_held*``,
``cutover_positional`` (see native.py). Other keys:
``cutover:key:{job_key}`` (live holder of a job key), ``cutover:held:{queue}`` (held jobs),
``cutover:held-dependents:{parent}`` (held deferred jobs, out of RQ's dependents set),
``cutover:paused`` and ``cutover:worker:{name}`` (heartbeats).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import json
import math
import threading
import time
import uuid
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
import rq
from redis.commands.core import Script

from cutover import codec
from cutover.audit import MISPLACED
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
from cutover.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    CutoverError,
    DecodeError,
    JobConflictError,
    JobError,
    UnsupportedValueError,
)
from cutover.limits import size_limits
from cutover.record import JobRecord, JobState, utcnow
from cutover.urls import redact, redact_text, secrets_of
from cutover_rq import native, scripts, store
from cutover_rq.decode import decode_job, payload_kind

_TS = "%Y-%m-%dT%H:%M:%S.%fZ"
_REGISTRIES = ("scheduled", "deferred", "failed", "finished", "canceled")
_STATUS = {
    "queued": JobState.QUEUED, "created": JobState.QUEUED, "ready_to_enqueue": JobState.QUEUED,
    "rate_limited": JobState.QUEUED, "scheduled": JobState.SCHEDULED,
    "deferred": JobState.DEFERRED, "started": JobState.STARTED, "finished": JobState.FINISHED,
    "failed": JobState.FAILED, "canceled": JobState.CANCELED, "stopped": JobState.CANCELED,
}
_PLACEMENT = {
    JobState.QUEUED: ("queue", "queued"), JobState.SCHEDULED: ("scheduled", "scheduled"),
    JobState.DEFERRED: ("deferred", "deferred"), JobState.FAILED: ("failed", "failed"),
    JobState.FINISHED: ("finished", "finished"), JobState.CANCELED: ("canceled", "canceled"),
}
_WAITING_STATES = {JobState.QUEUED, JobState.SCHEDULED, JobState.DEFERRED, JobState.HELD,
                   JobState.FAILED}
#: Where RQ keeps a waiting or failed job of each state (the drain reads these places).
_PLACED = {JobState.QUEUED: "rq:queue:{q}", JobState.SCHEDULED: "rq:scheduled:{q}",
           JobState.DEFERRED: "rq:deferred:{q}", JobState.FAILED: "rq:failed:{q}"}
_DEFAULT_RESULT_TTL = 500
_DEFAULT_FAILURE_TTL = 31_536_000
_WIP_TTL = 86_400
_VALUE_MAX = 512 * 2**20  # Redis's largest string value (the job's data field)


def _ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime(_TS)


def _parse_ts(raw: bytes | None) -> dt.datetime | None:
    """RQ's ``%Y-%m-%dT%H:%M:%S.%fZ`` (fromisoformat is several times faster than strptime)."""
    if not raw:
        return None
    try:
        return dt.datetime.fromisoformat(raw.decode().removesuffix("Z")).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _s(raw: Any) -> str:
    """A Redis reply (bytes) as text."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _hash(raw: Any) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], raw)


def _text(h: dict[bytes, bytes], field: str) -> str | None:
    raw = h.get(field.encode())
    return raw.decode("utf-8", "replace") if raw else None


_DEFAULT_TIMEOUT = b"180"
#: What RQ stores when a return value cannot be serialized (rq.defaults, same text in 2.x/3.x).
_UNSERIALIZABLE = "Unserializable return value"
_RESULT_SUCCESSFUL, _RESULT_FAILED = 1, 2  # rq.results.Result.Type


def _timeout(h: dict[bytes, bytes]) -> float | None:
    """RQ's job timeout (seconds; -1 means none), or None when the job has none."""
    raw = h.get(b"timeout")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class _Claim:
    """What a worker's claim remembers until the outcome is recorded."""

    member: str  # the rq:wip member, "{id}:{execution id}"
    serializer: Any  # the job's own (its payload's) serializer: results are written with it
    started: float


#: rq.results.Result.Type values that end a job (4 RETRIED does not).
_RESULT_STATUS = {b"1": "succeeded", b"2": "failed", b"3": "stopped", b"5": "failed"}


def _departure(ended: bytes | None, results: list[Any],
               registries: list[tuple[float | None, float | None]]) -> Departure | None:
    """How a job whose hash is gone ended, from the traces in Redis (see ``departures``)."""
    if ended:
        status, _, epoch = _s(ended).partition(" ")
        return Departure(finished=True, status=status, evidence="cutover:ended",
                         at=dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else None)
    if results:
        entry, fields = results[0]
        kind = _RESULT_STATUS.get(cast(dict[bytes, bytes], fields).get(b"type", b""))
        if kind is not None:  # the entry id is the time it was written, in ms
            at = dt.datetime.fromtimestamp(int(_s(entry).split("-")[0]) / 1000, dt.UTC)
            return Departure(finished=True, status=kind, evidence="rq:results (RQ's worker)",
                             at=at)
    for finished, failed in registries:
        if finished is not None or failed is not None:
            return Departure(finished=True,
                             status="succeeded" if finished is not None else "failed",
                             evidence="RQ's finished/failed registry (RQ's worker)")
    return None


def _losses(h: dict[bytes, bytes], meta_carried: bool = True) -> tuple[str, ...]:
    """RQ-only features of a job that no other backend keeps. The TTLs, timeout and plain-data
    meta are remembered (``record.native``) and restored by a move back to RQ; the others are
    gone once the job leaves RQ."""
    out = []
    for field in ("result_ttl", "failure_ttl", "ttl"):
        if h.get(field.encode()):
            out.append(f"rq {field}={_s(h[field.encode()])} (restored on a move back to RQ)")
    if h.get(b"timeout") not in (None, b"", _DEFAULT_TIMEOUT):
        out.append(f"rq job timeout={_s(h[b'timeout'])}s (restored on a move back to RQ)")
    for field in ("success_callback_name", "failure_callback_name", "stopped_callback_name"):
        if h.get(field.encode()):
            out.append(f"rq {field.replace('_name', '')} {_s(h[field.encode()])}")
    if h.get(b"meta"):
        out.append("rq meta (restored on a move back to RQ)" if meta_carried else
                   "rq meta (not plain data: not carried)")
    if h.get(b"enqueue_at_front") == b"1":
        out.append("rq at_front")
    if h.get(b"repeats_left"):
        out.append("rq repeat")
    if h.get(b"webhooks"):
        out.append("rq webhooks")
    if h.get(b"group_id"):
        out.append(f"rq group {_s(h[b'group_id'])}")
    return tuple(out)


def _depends_on(h: dict[bytes, bytes]) -> tuple[str, ...]:
    """The ids a job waits on: RQ's ``dependency_ids`` (JSON), or the older ``dependency_id``.
    (RQ's ``rq:job::{id}:dependencies`` set holds the same ids.)"""
    raw = h.get(b"dependency_ids")
    if raw:
        with contextlib.suppress(ValueError):
            ids = json.loads(raw)
            if isinstance(ids, list):
                return tuple(str(i) for i in ids)
    single = h.get(b"dependency_id")
    return (_s(single),) if single else ()


_LPOS_SCAN = 100_000  # at most this many list entries per LPOS (a bounded server-side scan)


class _ListIndex:
    """The members of a list as it was read (in chunks), for membership tests during a
    snapshot. Kept as the interpreter's 64-bit hashes of the ids, not the ids: about 60 bytes a
    member (a million-job queue: ~60 MB, once per snapshot). A hash collision can only make an
    orphan look queued."""

    def __init__(self, client: redis.Redis, key: str, chunk: int = 20_000) -> None:
        self.members: set[int] = set()
        start = 0
        while True:
            ids = cast(list[bytes], client.lrange(key, start, start + chunk - 1))
            self.members.update(map(hash, ids))
            if len(ids) < chunk:
                return
            start += chunk

    def __contains__(self, job_id: str) -> bool:
        return hash(job_id.encode("utf-8", "surrogateescape")) in self.members


class RQBackend:
    """RQ (rq 2.x and 3.x) on Redis.

    URL: ``redis://[:password@]host:port/db``, ``rediss://...`` or ``unix:///path?db=N``.
    Payloads of either serializer are read; a job is written in the serializer it remembers
    (``record.native``), else in its queue's (learned from the queue's jobs), else in the URL's
    ``serializer=json|pickle`` (default pickle): match what your RQ workers use.
    """

    name = "rq"
    capabilities = Capabilities(priority=False, scheduling=True, retries=True, results=True,
                                dependencies=True, job_key=True)

    def __init__(self, url: str, *, client: redis.Redis | None = None) -> None:
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query))
        self.serializer_name = params.pop("serializer", "pickle")
        if self.serializer_name not in ("pickle", "json"):
            raise ConfigurationError(f"serializer must be pickle or json, not "
                                     f"{self.serializer_name!r}", url=redact(url))
        base = url.split("?", 1)[0]
        self._raw_url = f"{base}?{urlencode(params)}" if params else base
        self._url = redact(url)
        self._secrets = secrets_of(url)
        self.db = store.database_of(url)
        self._identity: StoreIdentity | None = None
        try:
            self.redis: redis.Redis = client or redis.Redis.from_url(
                self._raw_url, socket_connect_timeout=5, health_check_interval=30)
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {self._url}: "
                                     f"{redact_text(str(exc), *self._secrets)}") from exc
        self._scripts: dict[str, Script] = {}
        self._claims: dict[str, _Claim] = {}
        self._skipped: set[str] = set()  # jobs this process's worker refused to run
        self._learned: dict[str, tuple[str, float]] = {}  # queue -> (serializer, valid until)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"RQBackend({self._url!r})"

    def identity(self) -> StoreIdentity:
        """``redis:<marker>/db<N>``: see :mod:`cutover_rq.store`."""
        if self._identity is not None:
            return self._identity
        with self._errors("reading the store's identity"):
            found = store.identity(self.redis, self.db, self._url)
        if found.key.startswith("redis:"):  # the fallback is asked again: a marker may come
            self._identity = found
        return found

    # -- plumbing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except CutoverError:
            raise
        except redis.AuthenticationError as exc:  # a ConnectionError to redis-py; not to people
            raise BackendUnavailableError(
                f"Redis at {self._url} refused the credentials while {doing}: "
                f"{redact_text(str(exc), *self._secrets)}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailableError(
                f"Redis at {self._url} is unreachable while {doing}: "
                f"{redact_text(str(exc), *self._secrets)}") from exc
        except redis.RedisError as exc:
            raise BackendError(f"Redis at {self._url} failed while {doing}: "
                               f"{redact_text(str(exc), *self._secrets)}") from exc

    def _script(self, name: str) -> Script:
        with self._lock:
            if name not in self._scripts:
                self._scripts[name] = self.redis.register_script(scripts.source(name))
            return self._scripts[name]

    def _queues(self) -> list[str]:
        prefix = "rq:queue:"
        names = {_s(k)[len(prefix):] for k in cast(set[bytes], self.redis.smembers("rq:queues"))
                 if _s(k).startswith(prefix)}
        return sorted(names)

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

    # -- records ---------------------------------------------------------------------------
    def _record(self, job_id: str, h: dict[bytes, bytes],
                scheduled_score: float | None = None, location: str | None = None) -> JobRecord:
        status = _text(h, "status") or ""
        state = _STATUS.get(status, JobState.QUEUED)
        if h.get(b"cutover_held"):
            state = JobState.HELD
        problem: str | None = None
        task: str = ""
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        serializer: str | None = None
        positional: list[str] | None = None
        raw = h.get(b"data")
        if raw is None:
            problem = "malformed job hash: no data field"
        else:
            try:
                serializer, task, args, kwargs = decode_job(raw)
                args, kwargs, positional = native.read_positional(h, args, kwargs)
            except DecodeError as exc:
                problem = exc.message
        memory, meta_carried = native.read_memory(h, serializer)
        job_native: dict[str, Any] = {"rq": memory}
        if positional is not None:
            job_native["positional"] = positional
        if not status:
            # RQ's take, claim and give back all start from the status: a job without one would
            # be counted and then silently skipped. Quarantined, with the reason.
            problem = problem or "malformed job hash: no status field"
        elif status not in _STATUS:
            problem = problem or f"unknown RQ status {status!r}"
        try:
            attempts = int(h.get(b"cutover_attempts") or 0)
            retries_left = int(h.get(b"retries_left") or 0)
            max_raw = h.get(b"cutover_max_attempts")
            max_attempts = int(max_raw) if max_raw else attempts + retries_left + 1
            intervals_raw = h.get(b"cutover_retry_intervals") or h.get(b"retry_intervals")
            intervals = tuple(json.loads(intervals_raw)) if intervals_raw else ()
            priority = int(h.get(b"cutover_priority") or 0)
            run_raw = h.get(b"cutover_run_at")
            run_at_ts = float(run_raw) if run_raw else scheduled_score
            if run_at_ts is None and h.get(b"cutover_held_from") == b"scheduled":
                run_at_ts = float(h.get(b"cutover_held_score") or 0) or None
        except (ValueError, TypeError) as exc:
            problem = problem or f"malformed job hash field: {exc}"
            attempts, max_attempts, intervals, priority, run_at_ts = 0, 1, (), 0, None
        result: Any = None
        if h.get(b"cutover_result"):
            try:
                result = codec.loads(h[b"cutover_result"])
            except DecodeError:
                result = _text(h, "cutover_result")
        error = _text(h, "cutover_error")
        if error is None and h.get(b"exc_info"):
            with contextlib.suppress(zlib.error):
                error = zlib.decompress(h[b"exc_info"]).decode("utf-8", "replace").strip()
        return JobRecord(
            id=job_id, task=task, args=args, kwargs=kwargs, queue=_text(h, "origin") or "",
            priority=priority,
            run_at=dt.datetime.fromtimestamp(run_at_ts, dt.UTC) if run_at_ts else None,
            attempts=attempts, max_attempts=max(max_attempts, 1), retry_intervals=intervals,
            job_key=_text(h, "cutover_job_key"), state=state, origin=_text(h, "cutover_origin")
            or "rq", created_at=_parse_ts(h.get(b"created_at")),
            updated_at=_parse_ts(h.get(b"ended_at")) or _parse_ts(h.get(b"started_at")),
            error=error, result=result, native_id=job_id, problem=problem, location=location,
            holder=_text(h, "cutover_held"), losses=_losses(h, meta_carried), timeout=_timeout(h),
            depends_on=_depends_on(h),
            dependency_failures_allowed=h.get(b"allow_dependency_failures") == b"1",
            native=job_native)

    def _mapping(self, record: JobRecord, status: str) -> dict[str, Any]:
        """The job hash of ``record`` in RQ's own format (built by RQ's Job class), written as
        the job remembers RQ stored it (``native``), else with its queue's serializer."""
        if record.task == "" or record.problem:
            raise JobError(f"cannot write a job with a problem: {record.problem}",
                           job_id=record.id)
        try:
            fmt = native.write_format(record, native.serializer_for(record,
                                                                    self.queue_serializer))
        except CutoverError as exc:
            raise JobError(f"cannot write the job in RQ's format: {exc}",
                           job_id=record.id) from exc
        retry = None
        if record.retries_left > 0:
            intervals = [math.ceil(i) for i in record.retry_intervals] or 0
            retry = rq.Retry(max=record.retries_left, interval=intervals)
        try:
            job = rq.job.Job.create(record.task, args=fmt.args, kwargs=fmt.kwargs,
                                    connection=self.redis, id=record.id, origin=record.queue,
                                    serializer=native.SERIALIZERS[fmt.serializer],
                                    retry=retry, status=rq.job.JobStatus(status),
                                    **fmt.options)
        except (TypeError, ValueError) as exc:
            raise JobError(f"RQ refused the job: {exc}", job_id=record.id) from exc
        now = utcnow()
        job.enqueued_at = now.replace(tzinfo=None)
        if record.created_at:
            job.created_at = record.created_at.astimezone(dt.UTC).replace(tzinfo=None)
        mapping = {k: v for k, v in job.to_dict().items() if v is not None}
        mapping.update({
            "cutover_priority": record.priority,
            "cutover_attempts": record.attempts,
            "cutover_max_attempts": record.max_attempts,
            "cutover_retry_intervals": json.dumps(list(record.retry_intervals)),
            "cutover_origin": record.origin or self.name,
        })
        if fmt.positional:
            mapping[native.POSITIONAL_FIELD] = json.dumps(fmt.positional)
        if record.job_key is not None:
            mapping["cutover_job_key"] = record.job_key
        if record.run_at is not None:
            mapping["cutover_run_at"] = record.run_at.timestamp()
        if record.error is not None:
            mapping["cutover_error"] = record.error
        return mapping

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
            if state not in _PLACEMENT:
                raise JobError(f"a {state.value} job cannot be written to RQ", job_id=record.id)
            placement, status = _PLACEMENT[state]
            score: float = time.time()
            if state is JobState.SCHEDULED:
                score = (record.run_at or utcnow()).timestamp()
            elif state is JobState.FINISHED:
                score += _DEFAULT_RESULT_TTL
            elif state is JobState.FAILED:
                score += _DEFAULT_FAILURE_TTL
            flat: list[Any] = ["cutover_moved", 1] if moved else []
            for key, value in self._mapping(record, status).items():
                flat += [key, value]
            answers.append(script(args=[record.id, record.queue, placement,
                                        int(score) if placement == "scheduled" else score,
                                        record.job_key or "", *flat], client=pipe))
        if pipe is not self.redis:
            answers = pipe.execute()
        return [(outcome.decode(), job_id.decode()) for outcome, job_id in answers]

    # -- serializers -----------------------------------------------------------------------
    def queue_serializer(self, queue: str) -> str:
        """The serializer a new job of ``queue`` is written with: the one its jobs use (read
        from up to ten of them: waiting, scheduled, finished and failed; the majority wins),
        else the URL's ``serializer`` option. Learned answers are kept a minute, the fallback a
        few seconds (a queue that was empty may fill)."""
        now = time.monotonic()
        with self._lock:
            known = self._learned.get(queue)
        if known is not None and known[1] > now:
            return known[0]
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(f"rq:queue:{queue}", 0, 9)
        for registry in ("scheduled", "finished", "failed"):
            pipe.zrevrange(f"rq:{registry}:{queue}", 0, 9)
        ids = list(dict.fromkeys(_s(i) for found in pipe.execute() for i in found))[:10]
        votes = {"pickle": 0, "json": 0}
        if ids:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(f"rq:job:{job_id}", "data")
            for data in pipe.execute():
                if data:
                    votes[payload_kind(data)] += 1
        if votes["pickle"] != votes["json"]:
            learned, keep = max(votes, key=lambda k: votes[k]), 60.0
        else:
            learned, keep = self.serializer_name, 5.0
        with self._lock:
            self._learned[queue] = (learned, now + keep)
        return learned

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
    def get(self, job_id: str) -> JobRecord | None:
        with self._errors(f"reading job {job_id}"):
            h = _hash(self.redis.hgetall(f"rq:job:{job_id}"))
            if not h:
                return None
            return self._locate([(job_id, h)])[0]

    def _locate(self, batch: list[tuple[str, dict[bytes, bytes]]],
                lists: dict[str, _ListIndex] | None = None) -> list[JobRecord]:
        """Records for a batch of hashes, with where each one really is: one pipeline, and for
        queued jobs a look in their queue's list.

        A waiting or failed job that is not where RQ keeps a job of its status and queue is
        looked for in the other queues' lists and registries: found there it is
        ``misplaced:<key>`` (a worker of that queue would run it), else ``orphan``. The drain,
        which reads those lists and registries, places it the same way (see ``_at``), so audit
        and the drain classify it alike.

        ``lists``: indexes of the queue lists, kept for a whole snapshot. Without them LPOS
        finds a queued job in its list — right for one job, but for a snapshot it would scan the
        list on the server once per job (quadratic: hours for a million-job queue, with Redis
        blocked meanwhile)."""
        pipe = self.redis.pipeline(transaction=False)
        registries: list[bool] = []  # a third answer: the job's deferred or failed registry
        for job_id, h in batch:
            origin = _text(h, "origin") or ""
            status = _text(h, "status") or ""
            pipe.zscore(f"rq:scheduled:{origin}", job_id)
            pipe.lpos(f"rq:queue:{origin}:intermediate", job_id)
            registries.append(status in ("deferred", "failed"))
            if registries[-1]:
                pipe.zscore(f"rq:{status}:{origin}", job_id)
        answers = iter(pipe.execute())
        queued = [i for i, (_, h) in enumerate(batch)
                  if _STATUS.get(_text(h, "status") or "") is JobState.QUEUED
                  and not h.get(b"cutover_held")]
        in_queue = self._in_queues([batch[i] for i in queued], lists)
        out = []
        astray: list[int] = []
        for i, (job_id, h) in enumerate(batch):
            score, in_intermediate = next(answers), next(answers)
            registered = next(answers) if registries[i] else None
            state = _STATUS.get(_text(h, "status") or "")
            origin = _text(h, "origin") or ""
            location: str | None = None
            if h.get(b"cutover_held"):
                location = f"cutover:held:{origin}"
            elif in_intermediate is not None:
                location = f"rq:queue:{origin}:intermediate"
            elif job_id in in_queue:
                location = f"rq:queue:{origin}"
            elif score is not None:
                location = f"rq:scheduled:{origin}"
            elif registered is not None and state in (JobState.DEFERRED, JobState.FAILED):
                location = f"rq:{state.value}:{origin}"
            if state in _PLACED and not h.get(b"cutover_held") and in_intermediate is None:
                if location is None:
                    astray.append(i)
                    location = "orphan"
                elif location != _PLACED[state].format(q=origin):
                    location = MISPLACED + location  # e.g. queued, in the scheduled registry
            record = self._record(job_id, h, score, location)
            if in_intermediate is not None and record.state is JobState.QUEUED:
                record = record.replace(state=JobState.STARTED)
            out.append(record)
        if astray:
            found = self._find_elsewhere([batch[i][0] for i in astray], lists)
            for i in astray:
                if out[i].id in found and not out[i].problem:
                    out[i] = out[i].replace(location=MISPLACED + found[out[i].id])
        return out

    def _find_elsewhere(self, ids: list[str],
                        lists: dict[str, _ListIndex] | None) -> dict[str, str]:
        """Where jobs not found in their own place sit: another queue's list, or a registry
        the drain reads (scheduled, deferred, failed) of any queue. id -> key."""
        found: dict[str, str] = {}
        names = self._queues()
        pipe = self.redis.pipeline(transaction=False)
        keys = [f"rq:{reg}:{q}" for q in names for reg in ("scheduled", "deferred", "failed")]
        for job_id in ids:
            for key in keys:
                pipe.zscore(key, job_id)
        answers = pipe.execute()
        for n, job_id in enumerate(ids):
            hits = [k for k, a in zip(keys, answers[n * len(keys):(n + 1) * len(keys)],
                                      strict=True) if a is not None]
            if hits:
                found[job_id] = hits[0]
        rest = [i for i in ids if i not in found]
        for q in names if rest else []:
            key = f"rq:queue:{q}"
            fake = [(job_id, {b"origin": q.encode("utf-8", "surrogateescape")})
                    for job_id in rest if job_id not in found]
            for job_id in self._in_queues(fake, lists):
                found[job_id] = key
        return found

    def _in_queues(self, batch: list[tuple[str, dict[bytes, bytes]]],
                   lists: dict[str, _ListIndex] | None) -> set[str]:
        """Which of these queued jobs are in their queue's list. With indexes, a job the index
        does not know (enqueued since it was read, or an orphan) is looked for with LPOS from
        the tail, where RQ appends, then from the head: each scan bounded."""
        found: set[str] = set()
        unknown: list[tuple[str, str]] = []
        for job_id, h in batch:
            key = f"rq:queue:{_text(h, 'origin') or ''}"
            if lists is None:
                unknown.append((job_id, key))
                continue
            if key not in lists:
                lists[key] = _ListIndex(self.redis, key)
            if job_id in lists[key]:
                found.add(job_id)
            else:
                unknown.append((job_id, key))
        if not unknown:
            return found
        bound = None if lists is None else _LPOS_SCAN
        pipe = self.redis.pipeline(transaction=False)
        for job_id, key in unknown:
            pipe.lpos(key, job_id, rank=-1, maxlen=bound)
            if bound is not None:
                pipe.lpos(key, job_id, maxlen=bound)
        answers = pipe.execute()
        step = 1 if bound is None else 2
        for n, (job_id, _) in enumerate(unknown):
            if any(a is not None for a in answers[step * n: step * n + step]):
                found.add(job_id)
        return found

    def snapshot(self, *, states: Collection[JobState] | None = None,
                 queues: Collection[str] | None = None,
                 batch_size: int = 1000) -> Iterator[JobRecord]:
        with self._errors("reading a snapshot"):
            batch: list[str] = []
            lists: dict[str, _ListIndex] = {}
            for key in self.redis.scan_iter(match="rq:job:*", count=batch_size):
                job_id = key[len(b"rq:job:"):].decode("utf-8", "replace")
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
                        lists: dict[str, _ListIndex] | None = None) -> Iterator[JobRecord]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(f"rq:job:{job_id}")
        hashes = [(job_id, _hash(h)) for job_id, h in zip(ids, pipe.execute(), strict=True)
                  if h and (queues is None or _text(h, "origin") in queues)]
        for record in self._locate(hashes, lists):
            if states is None or record.state in states:
                yield record

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
        places: list[tuple[str, bool]] = []
        for q in names:
            if wanted & {JobState.QUEUED, JobState.SCHEDULED}:
                places.append((f"rq:queue:{q}", True))
            if wanted & {JobState.SCHEDULED, JobState.QUEUED}:
                places.append((f"rq:scheduled:{q}", False))
            if JobState.DEFERRED in wanted:
                places.append((f"rq:deferred:{q}", False))
            if JobState.HELD in wanted:
                places.append((f"cutover:held:{q}", False))
            if JobState.FAILED in wanted:
                places.append((f"rq:failed:{q}", False))
        for key, is_list in places:
            start = 0
            previous: list[str] = []
            while True:
                with self._errors("reading a snapshot"):
                    if previous:
                        # Re-anchor: jobs of the previous batch still at `start` stayed in place.
                        again, _ = self._range(key, is_list, start, start + len(previous) - 1)
                        left = set(previous)
                        kept = 0
                        for job_id in again:
                            if job_id not in left:
                                break
                            kept += 1
                        start += kept
                    ids, scores = self._range(key, is_list, start, start + batch_size - 1)
                    if not ids:
                        break
                    mine = [(i, sc) for i, sc in zip(ids, scores, strict=True)
                            if in_partition(i, partition)]
                    records = [r for r in self._at(key, [i for i, _ in mine],
                                                   [sc for _, sc in mine])
                               if r.state in wanted]
                previous = ids
                if records or partition is not None:
                    yield records

    def _range(self, key: str, is_list: bool, start: int, end: int
               ) -> tuple[list[str], list[float | None]]:
        if is_list:
            ids = [_s(i) for i in cast(list[bytes], self.redis.lrange(key, start, end))]
            return ids, [None] * len(ids)
        pairs = cast(list[tuple[bytes, float]],
                     self.redis.zrange(key, start, end, withscores=True))
        return [_s(i) for i, _ in pairs], [float(sc) for _, sc in pairs]

    def _at(self, key: str, ids: list[str], scores: list[float | None]) -> list[JobRecord]:
        """Records of jobs read from one known place (no need to look for them)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(f"rq:job:{job_id}")
        out = []
        scheduled = key.startswith("rq:scheduled:")
        for job_id, h, score in zip(ids, pipe.execute(), scores, strict=True):
            if not h:
                continue  # an id whose hash is gone: RQ skips those too
            record = self._record(job_id, _hash(h), score if scheduled else None, key)
            if (record.state in _PLACED and not record.problem
                    and key != _PLACED[record.state].format(q=record.queue)):
                # Not where RQ keeps a job of its status and queue: taking it (by its origin)
                # would leave it here for a worker to run. Audit says the same (``_locate``).
                record = record.replace(location=MISPLACED + key)
            out.append(record)
        return out

    def counts(self, queues: Collection[str] | None = None) -> dict[str, dict[JobState, int]]:
        with self._errors("counting jobs"):
            names = [q for q in self._queues() if queues is None or q in queues]
            pipe = self.redis.pipeline(transaction=False)
            for q in names:
                pipe.llen(f"rq:queue:{q}")
                pipe.zcard(f"rq:ready:{q}")
                pipe.llen(f"rq:queue:{q}:intermediate")
                pipe.zcard(f"rq:wip:{q}")
                for reg in _REGISTRIES:
                    pipe.zcard(f"rq:{reg}:{q}")
                pipe.zcard(f"cutover:held:{q}")
            raw = pipe.execute()
        out: dict[str, dict[JobState, int]] = {}
        width = 5 + len(_REGISTRIES)
        for i, q in enumerate(names):
            queued, ready, inter, wip, sched, deferred, failed, finished, canceled, held = \
                raw[i * width:(i + 1) * width]
            per = dict.fromkeys(JobState, 0)
            per[JobState.QUEUED] = queued + ready
            per[JobState.STARTED] = inter + wip
            per[JobState.SCHEDULED] = sched
            per[JobState.DEFERRED] = deferred
            per[JobState.FAILED] = failed
            per[JobState.FINISHED] = finished
            per[JobState.CANCELED] = canceled
            per[JobState.HELD] = held
            out[q] = per
        return out

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
        out: dict[str, Departure] = {}
        if not job_ids:
            return out
        with self._errors("reading departures"):
            queues = self._queues()
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.exists(f"rq:job:{job_id}")
                pipe.hget("cutover:ended", job_id)
                pipe.xrevrange(f"rq:results:{job_id}", count=1)
                for q in queues:
                    pipe.zscore(f"rq:finished:{q}", job_id)
                    pipe.zscore(f"rq:failed:{q}", job_id)
            answers = iter(pipe.execute())
            for job_id in job_ids:
                exists, ended, results = next(answers), next(answers), next(answers)
                registries = [(next(answers), next(answers)) for _ in queues]
                if exists:
                    continue
                found = _departure(ended, results, registries)
                if found is not None:
                    out[job_id] = found
        return out

    def pause(self, queues: Collection[str] | None = None) -> None:
        with self._errors("pausing"):
            self.redis.sadd("cutover:paused", *(queues or ["*"]))

    def resume(self, queues: Collection[str] | None = None) -> None:
        with self._errors("resuming"):
            if queues is None:
                self.redis.delete("cutover:paused")
            else:
                self.redis.srem("cutover:paused", *queues)

    def paused(self) -> set[str]:
        with self._errors("reading pauses"):
            return {_s(m) for m in cast(set[bytes], self.redis.smembers("cutover:paused"))}

    # -- working ---------------------------------------------------------------------------
    #: the hash fields claim_next.lua writes (unclaim.lua puts back what they were)
    _CLAIM_FIELDS = (b"status", b"started_at", b"worker_name", b"cutover_worker",
                     b"cutover_execution")

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
                    now, worker, _ts(utcnow()), now + _WIP_TTL, execution, len(skip), *skip,
                    *(queues or ())])
                if not got:
                    return None
                raw = cast(list[bytes], got)
                job_id, origin_place, score = _s(raw[0]), _s(raw[1]), _s(raw[2])
                prev, nxt = _s(raw[3]), _s(raw[4])
                h = {raw[i]: raw[i + 1] for i in range(5, len(raw) - 1, 2)}
                member = f"{job_id}:{execution}"
                record = self._record(job_id, h)
                if accept(record) is not None or record.problem:
                    with self._lock:
                        self._skipped.add(job_id)
                    restore = [x for f in self._CLAIM_FIELDS if f in h for x in (f, h[f])]
                    gone = [f for f in self._CLAIM_FIELDS if f not in h]
                    self._script("unclaim")(args=[job_id, member, origin_place, score, prev,
                                                  nxt, len(restore) // 2, *restore, *gone])
                    continue
                serializer = (rq.serializers.JSONSerializer
                              if payload_kind(h.get(b"data", b"")) == "json"
                              else rq.serializers.DefaultSerializer)
                with self._lock:
                    self._claims[job_id] = _Claim(member, serializer, now)
                return record.replace(state=JobState.STARTED)
        return None

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
            raw = self._script("dependents")(args=[mode, *ids, _ts(utcnow())])
        return [_s(i) for i in raw]

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
                pipe.hmget(f"rq:job:{job_id}", "status", "cutover_held", "data")
            answers = pipe.execute()
        out: dict[str, JobState] = {}
        for job_id, (status, held, data) in zip(job_ids, answers, strict=True):
            if held is not None:
                out[job_id] = JobState.HELD
            elif status is not None or data is not None:
                # A hash without a status is not a finished job: not done.
                out[job_id] = _STATUS.get(_s(status or b""), JobState.QUEUED)
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
                    pipe.sadd(f"rq:job:{parent}:dependents", *children)
            pipe.execute()

    def _sweep_deferred(self) -> list[str]:
        """Deferred jobs whose dependencies are met but that nobody queued (a worker that died
        between finishing a parent and releasing its dependents; jobs an older cutover worker
        finished without releasing them)."""
        released: list[str] = []
        for q in self._queues():
            ids = [_s(i) for i in cast(list[bytes], self.redis.zrange(f"rq:deferred:{q}", 0, -1))]
            if ids:
                released += self.release_deferred(ids)
        return released

    def complete(self, job: JobRecord, worker: str, result: Any) -> None:
        try:
            stored = codec.dumps(result)
        except CutoverError:
            stored = codec.dumps(repr(result))
        entry: dict[str, Any] = {"type": _RESULT_SUCCESSFUL}
        if result is not None:
            # As rq.results.Result.serialize: the job's serializer, base64; a value it cannot
            # serialize is stored as RQ's placeholder text.
            serializer = self._serializer_of(job.id)
            try:
                payload = serializer.dumps(result)
            except Exception:
                payload = serializer.dumps(_UNSERIALIZABLE)
            entry["return_value"] = base64.b64encode(payload).decode()
        self._finish(job, worker, "finished", 0, {
            "status": "finished", "ended_at": _ts(utcnow()), "cutover_result": stored,
            "cutover_attempts": job.attempts + 1, "cutover_error": "", "exc_info": ""}, entry)
        self.release_dependents(job.id)

    def fail(self, job: JobRecord, worker: str, error: str,
             retry_at: dt.datetime | None) -> None:
        """``error``: the traceback text, kept as RQ keeps it (``exc_info`` on the hash, and
        ``exc_string`` in the result stream for a final failure)."""
        fields: dict[str, Any] = {
            "ended_at": _ts(utcnow()), "cutover_error": error,
            "exc_info": zlib.compress(error.encode()), "cutover_attempts": job.attempts + 1,
            "retries_left": max(job.max_attempts - job.attempts - 2, 0)}
        if retry_at is None:
            entry = {"type": _RESULT_FAILED,
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
        with self._errors("sending a heartbeat"):
            self.redis.set(f"cutover:worker:{worker}", time.time(), ex=_WIP_TTL)

    def recover_stalled(self, older_than: float) -> list[str]:
        recovered: list[str] = []
        now = time.time()
        with self._errors("recovering stalled jobs"):
            for q in self._queues():
                for raw in cast(list[bytes], self.redis.zrange(f"rq:wip:{q}", 0, -1)):
                    member = _s(raw)
                    job_id = member.split(":", 1)[0]
                    owner_raw = self.redis.hget(f"rq:job:{job_id}", "cutover_worker")
                    if not owner_raw:
                        continue  # RQ's own workers: RQ's maintenance handles them
                    owner = _s(owner_raw)
                    beat = cast(bytes | None, self.redis.get(f"cutover:worker:{owner}"))
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
            self._claims[job_id] = _Claim(member, native.SERIALIZERS[self.serializer_name],
                                          time.time())
        error, retry_at = stalled_outcome(job)
        self.fail(job, dead, error, retry_at)

    def native_workers(self, exclude: Collection[str] = ()) -> list[NativeWorker]:
        """RQ's own workers alive now: members of ``rq:workers`` whose ``rq:worker:<name>``
        hash still exists (RQ lets it expire when the worker stops heartbeating). Cutover's
        worker does not register there; ``exclude`` names any that fleet members declared."""
        with self._errors("listing RQ's workers"):
            names = sorted(_s(n) for n in self.redis.smembers("rq:workers"))
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                key = name if name.startswith("rq:worker:") else f"rq:worker:{name}"
                pipe.hmget(key, "hostname", "pid", "queues", "last_heartbeat")
            found: list[NativeWorker] = []
            for name, fields in zip(names, pipe.execute(), strict=True):
                short = name.removeprefix("rq:worker:")
                if short in exclude or name in exclude or not any(fields):
                    continue
                host, pid, queues, beat = (_s(f) if f is not None else "?" for f in fields)
                found.append(NativeWorker(short, f"host {host} pid {pid} queues {queues} "
                                                 f"last heartbeat {beat}"))
        return found

    def close(self) -> None:
        self.redis.close()
