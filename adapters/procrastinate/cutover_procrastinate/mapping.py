"""Rows <-> records: how a job is read from procrastinate_jobs joined with cutover_jobs, and
written back (statuses per state, the held job's far date, JSON text, ids as lines)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

from cutover import codec
from cutover.errors import DecodeError, JobError
from cutover.record import JobRecord, JobState, utcnow

NATIVE = re.compile(r"^pg-(\d+)$")
PUT_STATUS = {
    JobState.QUEUED: "todo", JobState.SCHEDULED: "todo", JobState.HELD: "todo",
    JobState.DEFERRED: "todo", JobState.FINISHED: "succeeded", JobState.FAILED: "failed",
    JobState.CANCELED: "cancelled",
}
#: procrastinate statuses that can hold a job in each state (the state is then decided per row)
STATUSES: dict[JobState, tuple[str, ...]] = {
    JobState.QUEUED: ("todo",), JobState.SCHEDULED: ("todo",), JobState.HELD: ("todo",),
    JobState.DEFERRED: (), JobState.STARTED: ("doing", "aborting"),
    JobState.FINISHED: ("succeeded",), JobState.FAILED: ("failed",),
    JobState.CANCELED: ("cancelled", "aborted"),
}
FAR = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)  # a held job's scheduled_at
NAME_MAX = 128  # procrastinate_jobs.queue_name and task_name are character varying(128)
#: procrastinate's insert trigger notifies channel 'procrastinate_queue_v1#' || queue_name, and
#: PostgreSQL refuses a channel name over 63 bytes ("channel name too long"): a longer queue name
#: fits the column, then fails every insert into that queue.
QUEUE_CHANNEL = "procrastinate_queue_v1#"
QUEUE_BYTES_MAX = 63 - len(QUEUE_CHANNEL)
JSONB_MAX = 255 * 2**20  # PostgreSQL's largest jsonb value (args)


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def lines(job_ids: Sequence[str]) -> str:
    """Ids as one newline-separated text (cheap to send; see queries.sql)."""
    for job_id in job_ids:
        if "\n" in job_id:
            raise JobError("a job id cannot contain a newline", job_id=repr(job_id))
    return "\n".join(job_ids)


def native_ids(job_ids: Sequence[str]) -> list[int]:
    return [int(m.group(1)) for i in job_ids if (m := NATIVE.match(i))]


def record_from_row(row: tuple[Any, ...]) -> JobRecord:
    """A job from a ``select_jobs`` row (procrastinate_jobs joined with cutover_jobs)."""
    (job_id, queue, task, priority, key, args, status, scheduled_at, attempts, cutover_id,
     max_attempts, intervals, positional, origin, created_at, updated_at, held_by,
     held_scheduled_at, error, result, lock, job_native) = row
    problem = None
    try:
        kwargs = codec.decode(args or {})
        pos = tuple(codec.decode(positional)) if positional else ()
    except DecodeError as exc:
        kwargs, pos, problem = {}, (), f"undecodable args: {exc.message}"
    if not isinstance(kwargs, dict):
        kwargs, problem = {}, f"args are not an object: {type(kwargs).__name__}"
    run_at = held_scheduled_at if held_by else scheduled_at
    if status == "todo":
        state = (JobState.SCHEDULED if scheduled_at is not None and scheduled_at > utcnow()
                 else JobState.QUEUED)
    elif status in ("doing", "aborting"):
        state = JobState.STARTED
    elif status == "succeeded":
        state = JobState.FINISHED
    elif status == "failed":
        state = JobState.FAILED
    else:
        state = JobState.CANCELED
    if held_by:
        state = JobState.HELD
    try:
        decoded_result = codec.decode(result) if result is not None else None
    except DecodeError:
        decoded_result = result
    try:
        native = codec.decode(job_native) if isinstance(job_native, dict) else {}
    except DecodeError:
        native = {}  # format memory only: the job itself is intact
    # The job's own time limit (RQ's job timeout) rides along with the format memory.
    timeout = native.pop("timeout", None)
    return JobRecord(
        id=cutover_id or f"pg-{job_id}", task=task, args=pos, kwargs=kwargs, queue=queue,
        priority=priority, run_at=run_at if run_at != FAR and run_at is not None else None,
        attempts=attempts, max_attempts=max(max_attempts or 1, attempts + 1 if state.live
                                            else attempts, 1),
        retry_intervals=tuple(intervals or ()), job_key=key, state=state,
        origin=origin or "procrastinate", created_at=created_at, updated_at=updated_at,
        error=error, result=decoded_result, native_id=str(job_id), problem=problem,
        location=f"procrastinate_jobs:{job_id}", holder=held_by,
        losses=(f"procrastinate lock {lock!r}",) if lock else (), native=native,
        timeout=float(timeout) if isinstance(timeout, int | float) else None)


def encoded(r: JobRecord) -> tuple[str, str | None, str | None, str | None]:
    """A record's kwargs, positional args, result and format memory as JSON text."""
    args = to_json(r.encoded_kwargs())
    positional = to_json(r.encoded_args()) if r.args else None
    result = to_json(codec.encode(r.result, "result")) if r.result is not None else None
    carried = dict(r.native)
    if r.timeout is not None:
        carried["timeout"] = r.timeout
    memory = to_json(codec.encode(carried, "native")) if carried else None
    return args, positional, result, memory
