"""The job record: the portable form of a job, what moves between backends."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

from cutover import codec
from cutover.errors import UnsupportedValueError


class JobState(enum.StrEnum):
    """Where a job stands, in words every backend maps onto."""

    QUEUED = "queued"        # runnable now
    SCHEDULED = "scheduled"  # runnable at run_at (also a retry waiting for its backoff)
    DEFERRED = "deferred"    # waiting on dependencies
    STARTED = "started"      # a worker runs it
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"
    HELD = "held"            # taken by the toolkit: no worker can start it

    @property
    def live(self) -> bool:
        """A live job still has to run (or is running): the job key is held by it."""
        return self in _LIVE


_LIVE = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.DEFERRED, JobState.STARTED,
                   JobState.HELD})

#: States the reference story reports: waiting / active / completed / failed (+ scheduled,
#: deferred: waiting on a dependency, not on a time).
SUMMARY_STATES: dict[str, tuple[JobState, ...]] = {
    "waiting": (JobState.QUEUED,),
    "scheduled": (JobState.SCHEDULED,),
    "deferred": (JobState.DEFERRED,),
    "held": (JobState.HELD,),  # taken by a drain: no worker of either side runs them
    "active": (JobState.STARTED,),
    "completed": (JobState.FINISHED,),
    "failed": (JobState.FAILED,),
    # by an operator: RQ canceled or stopped, procrastinate cancelled or aborted
    "canceled": (JobState.CANCELED,),
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """An aware UTC datetime. A naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def normalize_run_at(value: dt.datetime | None) -> dt.datetime | None:
    """Run-at times are kept to the whole second (RQ's scheduled registry keeps no more),
    rounded UP: a job never becomes due before the time it was given (rounding down ran
    reminders up to a second early). Whole seconds stay as they are, so normalising twice,
    or on each side of a move, gives the same time and the same digest."""
    if value is None:
        return None
    value = as_utc(value)
    if value.microsecond:
        return value.replace(microsecond=0) + dt.timedelta(seconds=1)
    return value


def new_job_id() -> str:
    """A generated cutover id, valid as an RQ job id too."""
    return uuid.uuid4().hex


def exponential_intervals(base: float, retries: int, factor: float = 2.0) -> tuple[float, ...]:
    """The wait before each retry: base, base*factor, base*factor**2, ..."""
    return tuple(float(base * factor**i) for i in range(max(retries, 0)))


# The fields of JobRecord.content(): what the digest covers.
CONTENT_FIELDS = frozenset({"id", "task", "args", "kwargs", "queue", "priority", "run_at",
                            "attempts", "max_attempts", "retry_intervals", "job_key"})


@dataclasses.dataclass(frozen=True, slots=True)
class JobRecord:
    """A job in portable form.

    ``max_attempts`` counts executions allowed in all (1 means no retry); ``attempts`` counts those
    made. ``retry_intervals[k]`` is the wait in seconds after the (k+1)-th failure; the last one
    repeats. ``location`` says where the backend keeps it (``rq:scheduled:default``, ``orphan``);
    like the state and timestamps it is not part of the content; nor are ``holder`` (who holds a
    HELD job) and ``losses`` (what a move would drop: native features with no portable form, such
    as an RQ result TTL or callback). ``depends_on`` names the jobs this one waits on (RQ's
    ``depends_on``; ``dependency_failures_allowed``: a failed parent counts as done), read
    from the source and resolved by cutover.dependencies, never carried: a job moves only once
    its dependencies are met. ``problem`` is set on a job read
    from a backend that cannot be decoded or run (quarantined payload, malformed hash): such a
    record is reported and never executed.

    ``native`` is how the job's origin backend stored it, so that it can go back the same way:
    plain JSON data only, never part of the content (see docs/architecture.md, "Native format").
    Keys: ``positional`` (the names, in order, of the keyword args the producer passed
    positionally: :meth:`TaskRegistry.normalize` binds them to names and records them here) and
    one mapping per adapter (``rq``: serializer, description, timeout, TTLs, meta). Every
    backend carries it unchanged.
    """

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    run_at: dt.datetime | None = None
    attempts: int = 0
    max_attempts: int = 1
    retry_intervals: tuple[float, ...] = ()
    job_key: str | None = None
    state: JobState = JobState.QUEUED
    origin: str = ""
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    error: str | None = None
    result: Any = None
    native_id: str | None = None
    problem: str | None = None
    location: str | None = None
    holder: str | None = None
    losses: tuple[str, ...] = ()
    #: The job's own limit on one execution, in seconds (RQ's job timeout; -1 or 0: none). Not
    #: content: None means the task's or the worker's default applies.
    timeout: float | None = None
    depends_on: tuple[str, ...] = ()
    dependency_failures_allowed: bool = False
    native: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Encodings computed once per record (not a field; replace() keeps them unless the content
    # changes).
    _memo: dict[str, Any] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_memo", {})
        object.__setattr__(self, "run_at", normalize_run_at(self.run_at))
        object.__setattr__(self, "retry_intervals",
                           tuple(float(i) for i in self.retry_intervals))
        object.__setattr__(self, "args", tuple(self.args))

    def replace(self, **changes: Any) -> JobRecord:
        """A copy with ``changes``. The encodings computed so far carry over when no content
        field changes (a new state, holder or timestamp leaves the content as it was).

        (Faster than ``dataclasses.replace``, which runs ``__init__`` and normalizes every
        field again: here only the changed fields are normalized.)"""
        unknown = changes.keys() - _FIELD_NAMES
        if unknown:
            raise TypeError(f"JobRecord has no field {sorted(unknown)[0]!r}")
        copy = object.__new__(JobRecord)
        put = object.__setattr__
        for name in _FIELD_NAMES:
            value = changes[name] if name in changes else getattr(self, name)
            put(copy, name, value)
        if "run_at" in changes:
            put(copy, "run_at", normalize_run_at(copy.run_at))
        if "retry_intervals" in changes:
            put(copy, "retry_intervals", tuple(float(i) for i in copy.retry_intervals))
        if "args" in changes:
            put(copy, "args", tuple(copy.args))
        put(copy, "_memo", dict(self._memo) if CONTENT_FIELDS.isdisjoint(changes) else {})
        return copy

    def retry_delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure before the next try."""
        if not self.retry_intervals:
            return 0.0
        index = min(max(failed_attempts, 1) - 1, len(self.retry_intervals) - 1)
        return self.retry_intervals[index]

    @property
    def retries_left(self) -> int:
        return max(self.max_attempts - self.attempts - 1, 0)

    def content(self) -> dict[str, Any]:
        """The fields that define the job's content, the same wherever it lives."""
        return {
            "id": self.id,
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "queue": self.queue,
            "priority": self.priority,
            "run_at": self.run_at.isoformat() if self.run_at else None,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "retry_intervals": list(self.retry_intervals),
            "job_key": self.job_key,
        }

    def encoded_kwargs(self) -> Any:
        """``kwargs`` in the tagged codec (computed once); raises UnsupportedValueError."""
        if "kwargs" not in self._memo:
            self._memo["kwargs"] = codec.encode(dict(self.kwargs), "kwargs")
        return self._memo["kwargs"]

    def encoded_args(self) -> Any:
        if "args" not in self._memo:
            self._memo["args"] = codec.encode(list(self.args), "args")
        return self._memo["args"]

    def carry_problems(self) -> list[str]:
        """What stops the arguments from crossing backends (empty when nothing)."""
        try:
            self.encoded_args()
            self.encoded_kwargs()
        except UnsupportedValueError as exc:
            return [exc.message]
        return []

    def content_json(self) -> str:
        """The canonical JSON of :meth:`content` (computed once)."""
        if "content" not in self._memo:
            doc = codec.encode({k: v for k, v in self.content().items()
                                if k not in ("args", "kwargs")})
            doc["args"] = self.encoded_args()
            doc["kwargs"] = self.encoded_kwargs()
            self._memo["content"] = json.dumps(doc, sort_keys=True, separators=(",", ":"),
                                               ensure_ascii=False)
        return str(self._memo["content"])

    def digest(self) -> str:
        """A content digest, equal across backends for the same job."""
        if "digest" not in self._memo:
            self._memo["digest"] = hashlib.sha256(self.content_json().encode()).hexdigest()
        return str(self._memo["digest"])

    def differences(self, other: JobRecord) -> dict[str, tuple[Any, Any]]:
        """The content fields that differ, as ``{field: (mine, theirs)}``."""
        mine, theirs = self.content(), other.content()
        return {k: (mine[k], theirs[k]) for k in mine if codec.canonical(mine[k])
                != codec.canonical(theirs[k])}


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(JobRecord))
