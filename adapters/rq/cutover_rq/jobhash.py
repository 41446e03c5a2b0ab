"""RQ's job hash: reading it into a record and writing a record as one, in RQ's own format.

Jobs are read straight from the hash (never with ``Job.fetch``, which unpickles ``meta`` and
``result`` with the unrestricted pickle) and written in RQ's own hash format, built by RQ's
``Job`` class, so plain RQ workers can run what this adapter puts. The payload is decoded by
decode.py; what a job remembers of how RQ stored it (serializer, positional args, TTLs, meta) is
native.py's.

Cutover-only facts live in extra hash fields that RQ leaves alone: ``cutover_priority``,
``cutover_attempts``, ``cutover_max_attempts``, ``cutover_retry_intervals``, ``cutover_job_key``,
``cutover_run_at``, ``cutover_error``, ``cutover_result``, ``cutover_held*``,
``cutover_positional`` (see native.py). The traces a job leaves when its hash is gone (the
result stream, ``cutover:ended``) are read by ``departure``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import zlib
from collections.abc import Callable
from typing import Any, cast

import redis
import rq

from cutover import codec
from cutover.backend import Departure
from cutover.errors import CutoverError, DecodeError, JobError
from cutover.record import JobRecord, JobState, utcnow
from cutover_rq import keys, native
from cutover_rq.decode import decode_job

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
STATUS = {
    "queued": JobState.QUEUED, "created": JobState.QUEUED, "ready_to_enqueue": JobState.QUEUED,
    "rate_limited": JobState.QUEUED, "scheduled": JobState.SCHEDULED,
    "deferred": JobState.DEFERRED, "started": JobState.STARTED, "finished": JobState.FINISHED,
    "failed": JobState.FAILED, "canceled": JobState.CANCELED, "stopped": JobState.CANCELED,
}
PLACEMENT = {
    JobState.QUEUED: ("queue", "queued"), JobState.SCHEDULED: ("scheduled", "scheduled"),
    JobState.DEFERRED: ("deferred", "deferred"), JobState.FAILED: ("failed", "failed"),
    JobState.FINISHED: ("finished", "finished"), JobState.CANCELED: ("canceled", "canceled"),
}


def ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime(TS_FORMAT)


def parse_ts(raw: bytes | None) -> dt.datetime | None:
    """RQ's ``%Y-%m-%dT%H:%M:%S.%fZ`` (fromisoformat is several times faster than strptime)."""
    if not raw:
        return None
    try:
        return dt.datetime.fromisoformat(raw.decode().removesuffix("Z")).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def reply_text(raw: Any) -> str:
    """A Redis reply (bytes) as text."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def as_hash(raw: Any) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], raw)


def field_text(h: dict[bytes, bytes], field: str) -> str | None:
    raw = h.get(field.encode())
    return raw.decode("utf-8", "replace") if raw else None


DEFAULT_TIMEOUT = b"180"
#: What RQ stores when a return value cannot be serialized (rq.defaults, same text in 2.x/3.x).
UNSERIALIZABLE = "Unserializable return value"
RESULT_SUCCESSFUL, RESULT_FAILED = 1, 2  # rq.results.Result.Type


def timeout(h: dict[bytes, bytes]) -> float | None:
    """RQ's job timeout (seconds; -1 means none), or None when the job has none."""
    raw = h.get(b"timeout")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


#: rq.results.Result.Type values that end a job (4 RETRIED does not).
RESULT_STATUS = {b"1": "succeeded", b"2": "failed", b"3": "stopped", b"5": "failed"}


def departure(ended: bytes | None, results: list[Any],
               registries: list[tuple[float | None, float | None]]) -> Departure | None:
    """How a job whose hash is gone ended, from the traces in Redis (see ``departures``)."""
    if ended:
        status, _, epoch = reply_text(ended).partition(" ")
        return Departure(finished=True, status=status, evidence=keys.ENDED,
                         at=dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else None)
    if results:
        entry, fields = results[0]
        kind = RESULT_STATUS.get(cast(dict[bytes, bytes], fields).get(b"type", b""))
        if kind is not None:  # the entry id is the time it was written, in ms
            at = dt.datetime.fromtimestamp(int(reply_text(entry).split("-")[0]) / 1000, dt.UTC)
            return Departure(finished=True, status=kind, evidence="rq:results (RQ's worker)",
                             at=at)
    for finished, failed in registries:
        if finished is not None or failed is not None:
            return Departure(finished=True,
                             status="succeeded" if finished is not None else "failed",
                             evidence="RQ's finished/failed registry (RQ's worker)")
    return None


def losses(h: dict[bytes, bytes], meta_carried: bool = True) -> tuple[str, ...]:
    """RQ-only features of a job that no other backend keeps. The TTLs, timeout and plain-data
    meta are remembered (``record.native``) and restored by a move back to RQ; the others are
    gone once the job leaves RQ."""
    out = []
    for field in ("result_ttl", "failure_ttl", "ttl"):
        if h.get(field.encode()):
            out.append(f"rq {field}={reply_text(h[field.encode()])} "
                       "(restored on a move back to RQ)")
    if h.get(b"timeout") not in (None, b"", DEFAULT_TIMEOUT):
        out.append(f"rq job timeout={reply_text(h[b'timeout'])}s (restored on a move back to RQ)")
    for field in ("success_callback_name", "failure_callback_name", "stopped_callback_name"):
        if h.get(field.encode()):
            out.append(f"rq {field.replace('_name', '')} {reply_text(h[field.encode()])}")
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
        out.append(f"rq group {reply_text(h[b'group_id'])}")
    return tuple(out)


def depends_on(h: dict[bytes, bytes]) -> tuple[str, ...]:
    """The ids a job waits on: RQ's ``dependency_ids`` (JSON), or the older ``dependency_id``.
    (RQ's ``rq:job::{id}:dependencies`` set holds the same ids.)"""
    raw = h.get(b"dependency_ids")
    if raw:
        with contextlib.suppress(ValueError):
            ids = json.loads(raw)
            if isinstance(ids, list):
                return tuple(str(i) for i in ids)
    single = h.get(b"dependency_id")
    return (reply_text(single),) if single else ()


def record(job_id: str, h: dict[bytes, bytes],
           scheduled_score: float | None = None, location: str | None = None) -> JobRecord:
    """The record of a job hash read from Redis (``scheduled_score``: its score in the scheduled
    registry; ``location``: where it was found). A hash that cannot be read gives a record with
    a ``problem``."""
    status = field_text(h, "status") or ""
    state = STATUS.get(status, JobState.QUEUED)
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
    elif status not in STATUS:
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
            result = field_text(h, "cutover_result")
    error = field_text(h, "cutover_error")
    if error is None and h.get(b"exc_info"):
        with contextlib.suppress(zlib.error):
            error = zlib.decompress(h[b"exc_info"]).decode("utf-8", "replace").strip()
    return JobRecord(
        id=job_id, task=task, args=args, kwargs=kwargs, queue=field_text(h, "origin") or "",
        priority=priority,
        run_at=dt.datetime.fromtimestamp(run_at_ts, dt.UTC) if run_at_ts else None,
        attempts=attempts, max_attempts=max(max_attempts, 1), retry_intervals=intervals,
        job_key=field_text(h, "cutover_job_key"), state=state,
        origin=field_text(h, "cutover_origin") or "rq", created_at=parse_ts(h.get(b"created_at")),
        updated_at=parse_ts(h.get(b"ended_at")) or parse_ts(h.get(b"started_at")),
        error=error, result=result, native_id=job_id, problem=problem, location=location,
        holder=field_text(h, "cutover_held"), losses=losses(h, meta_carried), timeout=timeout(h),
        depends_on=depends_on(h),
        dependency_failures_allowed=h.get(b"allow_dependency_failures") == b"1",
        native=job_native)


def mapping(record: JobRecord, status: str, client: redis.Redis,
            learned: Callable[[str], str], default_origin: str) -> dict[str, Any]:
    """The job hash of ``record`` in RQ's own format (built by RQ's Job class), written as
    the job remembers RQ stored it (``native``), else with its queue's serializer
    (``learned``); ``default_origin`` is the record's origin when it has none."""
    if record.task == "" or record.problem:
        raise JobError(f"cannot write a job with a problem: {record.problem}",
                       job_id=record.id)
    try:
        fmt = native.write_format(record, native.serializer_for(record,
                                                                learned))
    except CutoverError as exc:
        raise JobError(f"cannot write the job in RQ's format: {exc}",
                       job_id=record.id) from exc
    retry = None
    if record.retries_left > 0:
        intervals = [math.ceil(i) for i in record.retry_intervals] or 0
        retry = rq.Retry(max=record.retries_left, interval=intervals)
    try:
        job = rq.job.Job.create(record.task, args=fmt.args, kwargs=fmt.kwargs,
                                connection=client, id=record.id, origin=record.queue,
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
        "cutover_origin": record.origin or default_origin,
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
