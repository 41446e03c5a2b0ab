"""The one interface every queue backend is put behind.

It offers primitives, not policy: enqueue, snapshot, take (ownership away from the backend's
workers), put (idempotent, keeping identity, schedule and retry state), give back, remove, counts,
pause/resume, and the three calls a worker loop needs (claim, complete, fail). Dual-write, drain,
verify, rollback and the worker loop itself live above this interface, once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from cutover.record import JobRecord, JobState

#: Called by take/put/remove with the backend's open transaction (a psycopg connection) just
#: before it commits, or with None right after the operation where the backend has no such
#: transaction: the ledger row of a job is written in the same transaction as the job.
TxHook = Callable[[Any], None]
#: Called with the connection and the job just claimed, inside the claim's transaction.
ClaimHook = Callable[[Any, JobRecord], None]

#: A worker's filter: given a claimable job, return None to run it or a reason to skip it (the
#: backend then leaves that job where it is, untouched). Backends call it for every candidate,
#: those with a ``problem`` too (so the worker can report them), and never run a job that has one.
Acceptor = Callable[[JobRecord], str | None]


#: ``(k, n)``: share k (0 <= k < n) of a job set split n ways (see ``QueueBackend.batches``).
Partition = tuple[int, int]


def share_of(job_id: str, n: int) -> int:
    """Which of ``n`` shares a job id falls in (stable across processes and runs)."""
    return zlib.crc32(job_id.encode("utf-8", "surrogatepass")) % n


def in_partition(job_id: str, partition: Partition | None) -> bool:
    return partition is None or share_of(job_id, partition[1]) == partition[0]


def chunked(records: Iterable[JobRecord], size: int) -> Iterator[list[JobRecord]]:
    """Group a stream of records into lists of ``size`` (the last may be shorter)."""
    batch: list[JobRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend can keep. The core refuses or degrades explicitly where one is False."""

    priority: bool = True
    scheduling: bool = True
    retries: bool = True
    results: bool = True
    dependencies: bool = False
    job_key: bool = True
    transactional_enqueue: bool = False
    #: Other processes opening the same URL see the same jobs (false for the in-memory
    #: backend): a drain may then split its work between processes.
    shared: bool = True


@dataclasses.dataclass(frozen=True)
class StoreIdentity:
    """Which store a backend is connected to, whatever the URL's spelling.

    ``key`` is stable (across restarts, host names, addresses, sockets, credentials) and holds
    no secret: the ledger, the runs and the pair lock are keyed on it, and two backends with the
    same key are one store. ``url`` is the redacted URL it was reached by, for people to read.
    """

    key: str
    url: str

    def __str__(self) -> str:
        return self.url


@dataclasses.dataclass
class TakeResult:
    """What ``take`` did: the records now held by the owner, and the ids it could not take with
    the reason (running, finished, missing, held by another owner...)."""

    taken: list[JobRecord] = dataclasses.field(default_factory=list)
    refused: dict[str, str] = dataclasses.field(default_factory=dict)
    taken_ids: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.taken and not self.taken_ids:
            self.taken_ids = [r.id for r in self.taken]


@dataclasses.dataclass(frozen=True)
class Departure:
    """What a backend's own records say about a job it no longer holds.

    ``finished`` is True only on positive evidence that the job ran to an end (succeeded,
    failed for good, or was cancelled by an operator) before it was deleted: a record written
    when it finished or when a finished job was deleted. A job that is merely absent has no
    departure at all, and a deletion of a job that had not finished is ``finished=False``.
    """

    finished: bool
    #: The job's last status as the backend recorded it (``succeeded``, ``failed``,
    #: ``cancelled``, ``finished`` when the backend cannot say which, or the waiting or
    #: running status it was deleted in).
    status: str
    #: Where the fact comes from, for the report (a table, a Redis key).
    evidence: str
    at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class NativeWorker:
    """A worker of the backend's own library that is alive now (RQ's ``rq:workers``,
    ``procrastinate_workers``): it would run jobs without passing the cut-over's fence.
    Adapters offer ``native_workers(exclude=())`` (optional, like ``departures``)."""

    #: The id the backend knows it by (RQ worker name, procrastinate worker id).
    id: str
    #: What an operator reads to find it (host, pid, queues, last heartbeat).
    detail: str = ""


@runtime_checkable
class QueueBackend(Protocol):
    """A queue system behind the toolkit's one interface (synchronous, thread-safe)."""

    name: str
    capabilities: Capabilities

    @property
    def url(self) -> str:
        """The backend's URL with any password redacted."""
        ...

    def cannot_hold(self, record: JobRecord) -> list[str]:
        """Why this backend cannot hold ``record`` as it is (empty when it can): ids, names,
        sizes and values beyond what its store keeps. Audit, ``drain --dry-run`` and the drain
        classify such a job ``unsupported`` with these reasons before anything moves; a put
        of a record this accepts must not fail for the record's own sake (contract suite)."""
        ...

    def identity(self) -> StoreIdentity:
        """The store this backend is connected to (may ask the server once, then cached)."""
        ...

    def enqueue(self, records: Sequence[JobRecord]) -> list[str]:
        """Enqueue new jobs; return each job's cutover id.

        A record whose ``job_key`` is held by a live job enqueues nothing and returns the live
        job's id. A record whose id exists already enqueues nothing and returns that id.
        """
        ...

    def get(self, job_id: str) -> JobRecord | None:
        """One job by cutover id, or None."""
        ...

    def snapshot(self, *, states: Collection[JobState] | None = None,
                 queues: Collection[str] | None = None,
                 batch_size: int = 1000) -> Iterator[JobRecord]:
        """Stream every job (in constant memory), filtered by state and queue. Jobs that cannot
        be decoded come back with ``problem`` set, never skipped."""
        ...

    def counts(self, queues: Collection[str] | None = None) -> dict[str, dict[JobState, int]]:
        """Jobs per queue and state, without side effects on the backend."""
        ...

    def batches(self, *, states: Collection[JobState] | None = None,
                queues: Collection[str] | None = None, batch_size: int = 1000,
                partition: Partition | None = None) -> Iterator[list[JobRecord]]:
        """The snapshot in batches. The consumer may take, put or remove the jobs of a batch
        before asking for the next one: the backend keeps its place (a drain's read loop).

        ``partition=(k, n)``: only the jobs of share ``k`` of ``n`` (the shares are disjoint
        and together hold every job), so that n processes can split the work. A backend that
        reads by position (RQ's lists) yields a batch for every window it reads, even an empty
        one: the drain's processes wait for each other between windows, so that they all read
        the same windows (see cutover.drain.processes). One that reads by key may yield just its
        share's batches."""
        ...

    def departures(self, job_ids: Sequence[str]) -> dict[str, Departure]:
        """For jobs this backend no longer holds, what its own records say of how they left
        (see :class:`Departure`). Ids it has no record of are left out: absence is never
        evidence that a job finished. A record is cleared when a job with the same id is put
        again, so it always speaks of the job's latest stay."""
        ...

    def take(self, job_ids: Sequence[str], owner: str, *, tx_hook: TxHook | None = None,
             fetch: bool = True) -> TakeResult:
        """Atomically move waiting jobs (queued, scheduled, deferred) out of reach of the backend's
        workers and hold them for ``owner``. Idempotent: a job the owner holds already is
        returned again. ``taken_ids`` is always filled; ``taken`` (the records) may be left
        empty when ``fetch`` is False and reading them back would cost a round trip."""
        ...

    def give_back(self, job_ids: Sequence[str], owner: str) -> int:
        """Return jobs the owner holds to where they were; return how many moved."""
        ...

    def put(self, records: Sequence[JobRecord], *,
            tx_hook: TxHook | None = None) -> list[str]:
        """Insert jobs as they are (id, state, schedule, attempts, retry budget, job key).
        Idempotent: an id present with the same content is skipped; with different content it is
        a :class:`~cutover.errors.JobConflictError`. Returns the ids that were inserted."""
        ...

    def remove(self, job_ids: Sequence[str], *, tx_hook: TxHook | None = None) -> int:
        """Delete jobs wherever they are in this backend; return how many existed."""
        ...

    def pause(self, queues: Collection[str] | None = None) -> None:
        """Stop this toolkit's producers and workers taking new work for these queues."""
        ...

    def resume(self, queues: Collection[str] | None = None) -> None:
        """Undo :meth:`pause`."""
        ...

    def paused(self) -> set[str]:
        """Queues paused (``"*"`` for all)."""
        ...

    def claim(self, queues: Sequence[str] | None, worker: str,
              accept: Acceptor) -> JobRecord | None:
        """Atomically claim the next runnable job (state becomes STARTED) or return None."""
        ...

    def complete(self, job: JobRecord, worker: str, result: Any) -> None:
        """Mark a claimed job finished, keeping its result where the backend can."""
        ...

    def fail(self, job: JobRecord, worker: str, error: str,
             retry_at: dt.datetime | None) -> None:
        """Record a failed attempt: schedule the retry at ``retry_at`` or fail for good."""
        ...

    def recover_stalled(self, older_than: float) -> list[str]:
        """Count the attempt of each job whose worker died (no heartbeat for ``older_than`` s)
        as failed (:func:`stalled_outcome`): retried with its backoff while its budget lasts,
        else failed for good, as the worker's own fail would. Returns their ids, and those of
        other jobs it made runnable again (RQ: deferred jobs whose dependencies are met but
        that nobody queued)."""
        ...

    def heartbeat(self, worker: str) -> None:
        """Tell the backend the worker is alive."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def stalled_outcome(job: JobRecord) -> tuple[str, dt.datetime | None]:
    """The error and retry time (None: fail for good) of a job whose worker died running it.

    The attempt it was on counts, as a failure would (else a task that kills its worker runs
    again in every worker, forever): the retry time is what the worker's fail path computes.
    """
    attempt = job.attempts + 1
    error = (f"its worker died while running it (attempt {attempt} of {job.max_attempts})")
    if attempt >= job.max_attempts:
        return error, None
    delay = job.retry_delay(attempt)
    return error, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)


@runtime_checkable
class KeyLookup(Protocol):
    """A backend that says which live job holds a job key, by the rule its own enqueue applies
    (the Router honours a key held on the source while the phase writes the target only)."""

    def key_holders(self, job_keys: Sequence[str]) -> dict[str, str]:
        """``{job_key: job id}`` for each of ``job_keys`` a live job holds."""
        ...


@runtime_checkable
class TransactionalEnqueue(Protocol):
    """A backend that can enqueue inside a database transaction: its own, joined by ``tx_hook``
    (the Router's ledger row commits with the jobs), or the caller's ``conn``
    (``Router.enqueue(..., connection=conn)``). The PostgreSQL adapter has it."""

    def enqueue_tx(self, records: Sequence[JobRecord], *, tx_hook: TxHook | None = None,
                   conn: Any = None) -> list[str]:
        """:meth:`QueueBackend.enqueue` in one transaction (on ``conn`` when given)."""
        ...


@runtime_checkable
class TransactionalWork(Protocol):
    """A backend whose claim and outcome are transactions of a database the caller's statements
    can join: the fence's claim commits with the job's start, its finish with the job's
    outcome, when the control plane lives in that database (one commit each instead of two).
    The PostgreSQL adapter has it."""

    def claim_tx(self, queues: Sequence[str] | None, worker: str, accept: Acceptor,
                 tx_hook: ClaimHook) -> JobRecord | None:
        """:meth:`QueueBackend.claim`, with ``tx_hook(conn, job)`` run in the transaction that
        starts the job (an error in it leaves the job unclaimed)."""
        ...

    def complete_tx(self, job: JobRecord, worker: str, result: Any, tx_hook: TxHook) -> None:
        """:meth:`QueueBackend.complete` in one transaction with ``tx_hook``."""
        ...

    def fail_tx(self, job: JobRecord, worker: str, error: str, retry_at: dt.datetime | None,
                tx_hook: TxHook) -> None:
        """:meth:`QueueBackend.fail` in one transaction with ``tx_hook``."""
        ...

    def run_tx(self, tx_hook: TxHook) -> None:
        """``tx_hook`` alone in a transaction of the backend's (what database is this?)."""
        ...


@runtime_checkable
class StatementEnqueue(Protocol):
    """A backend that writes one job and one SQL statement of the caller's in a single
    statement: one round trip and one commit (the Router's single dual write, its ledger row
    with the target's copy, when the target's database holds the control plane). The
    PostgreSQL adapter has it."""

    def enqueue_with(self, record: JobRecord, statement: Any,
                     params: Mapping[str, Any]) -> str:
        """:meth:`QueueBackend.enqueue` of one record, with ``statement`` (a data-modifying
        SQL statement, ``psycopg.sql.Composable``, whose parameters ``params`` are named apart
        from the job's) committed with it; the job's resulting id."""
        ...
