"""Procrastinate behind the one interface.

Jobs live in procrastinate's own ``procrastinate_jobs`` table, written the way ``defer`` writes
them, so plain procrastinate workers can run what this adapter puts. What that table has no column
for (the cutover id, a job's own retry budget and backoff, positional args, error, result, the
hold) lives in the adapter's ``cutover_jobs`` table, in the same transaction. The job key is
procrastinate's ``queueing_lock``. A job is taken by holding it (``scheduled_at = 'infinity'``,
under a row lock), so no procrastinate worker can fetch it while it moves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import select
import threading
import time
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, LiteralString

import psycopg
import psycopg_pool
from psycopg.rows import TupleRow
from psycopg.sql import SQL
from psycopg.types.json import Jsonb

from cutover import codec
from cutover.backend import (
    Acceptor,
    Capabilities,
    ClaimHook,
    Departure,
    NativeWorker,
    Partition,
    StoreIdentity,
    TakeResult,
    TxHook,
    chunked,
    stalled_outcome,
)
from cutover.errors import (
    AccessRefusedError,
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    CutoverError,
    JobConflictError,
    JobError,
    refused_for_good,
)
from cutover.limits import int_limits, size_limits, text_limits
from cutover.record import JobRecord, JobState, utcnow
from cutover.urls import redact, redact_text, secrets_of
from cutover_procrastinate import sql
from cutover_procrastinate.mapping import (
    FAR,
    JSONB_MAX,
    NAME_MAX,
    NATIVE,
    PUT_STATUS,
    QUEUE_BYTES_MAX,
    STATUSES,
    encoded,
    lines,
    native_ids,
    record_from_row,
    to_json,
)

#: when each pooled connection was last given back (a connection idle longer is checked)
_RETURNED: weakref.WeakKeyDictionary[psycopg.Connection[TupleRow], float] = \
    weakref.WeakKeyDictionary()
_QUIET = 0.001  # seconds: a connection lent again sooner is in a hot loop


def _returned(conn: psycopg.Connection[TupleRow]) -> None:
    _RETURNED[conn] = time.monotonic()


def _check_connection(conn: psycopg.Connection[TupleRow]) -> None:
    """A connection the server dropped (restart, admin kill) is replaced, not handed out.

    A round trip on every borrow cost a single enqueue a fifth of its time, so it is spent
    only where it can find something: on a connection the server has sent something to since
    (a FATAL message, then EOF, is how it says it is closing it), or one that sat idle for more
    than a millisecond (a kill may not have arrived yet). A connection lent again at once, in a
    producer's or worker's loop, goes out as it is.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError) as exc:
        raise psycopg.OperationalError(f"the connection's socket is unusable: {exc}") from exc
    if readable or time.monotonic() - _RETURNED.get(conn, 0.0) > _QUIET:
        psycopg_pool.ConnectionPool.check_connection(conn)


class _Pool(psycopg_pool.ConnectionPool[psycopg.Connection[TupleRow]]):
    """psycopg_pool's pool, lending the connection given back last first, and taking it back
    at once.

    Given a ``reset`` function, psycopg_pool hands every returned connection to a worker thread:
    a hot loop borrowed again before it was back, took (or grew the pool to) another, and the
    pool's first-in-first-out order then lent each of two connections after two calls: always
    idle past ``_QUIET``, so :func:`_check_connection` spent its round trip on every borrow (a
    fifth of a single enqueue). So the time of return is noted here as the connection comes
    back (no ``reset``: psycopg_pool returns it synchronously), and the last one back goes out
    first: a hot loop keeps its hot connection, the others idle (and are checked when lent).
    The order reaches into the pool's deque; a psycopg_pool that lays it out otherwise keeps
    its own order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Set by the first connection made, or by a refusal no retry can help (then in
        #: ``refusal``): opening waits for this, not for the pool's retries to time out.
        self.settled = threading.Event()
        self.refusal: str | None = None
        super().__init__(*args, **kwargs)

    def _connect(self, timeout: float | None = None) -> psycopg.Connection[TupleRow]:
        try:
            conn = super()._connect(timeout)
        except psycopg.Error as exc:
            self.refusal = refused_for_good(str(exc))
            if self.refusal is not None:
                self.settled.set()
            raise
        self.settled.set()
        return conn

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None
                   ) -> Iterator[psycopg.Connection[TupleRow]]:
        with super().connection(timeout) as conn:
            yield conn
        _returned(conn)

    def _add_to_pool(self, conn: psycopg.Connection[TupleRow]) -> None:
        super()._add_to_pool(conn)
        idle: Any = getattr(self, "_pool", None)
        lock: Any = getattr(self, "_lock", None)
        if lock is None or not hasattr(idle, "rotate"):
            return
        with lock:
            if len(idle) > 1 and idle[-1] is conn:
                idle.rotate(1)  # to the front: popleft lends it next


def _configure(conn: psycopg.Connection[TupleRow]) -> None:
    """Plan every statement for its own values. psycopg prepares a statement after 5 runs and
    PostgreSQL then keeps a generic plan, made from the statistics of that moment: made while
    the tables were empty (or never analyzed) it scans them, and each enqueue, claim or take
    costs more as they grow. A custom plan sees the ids it looks up and uses the indexes."""
    conn.execute(sql.query("custom_plans"))


class ProcrastinateBackend:
    """Procrastinate 3.x on PostgreSQL.

    URL: ``postgresql://user[:password]@host:port/db``; procrastinate's tables are found through
    the connection's ``search_path`` (add ``?options=-csearch_path%3Dmyschema`` for another
    schema). Procrastinate's schema is applied when absent (its own apply is not idempotent).
    """

    name = "procrastinate"
    capabilities = Capabilities(priority=True, scheduling=True, retries=True, results=True,
                                dependencies=False, job_key=True, transactional_enqueue=True)

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10,
                 apply_schema: bool = True) -> None:
        self._url = redact(url)
        self._secrets = secrets_of(url)
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"invalid PostgreSQL URL {self._url}: "
                                     f"{redact_text(str(exc), *self._secrets)}") from exc
        self.pool: psycopg_pool.ConnectionPool[psycopg.Connection[TupleRow]] = \
            _Pool(url, min_size=min_size, max_size=max_size, open=False,
                  # autocommit: a one-statement operation is one round trip; transactions are
                  # explicit (conn.transaction())
                  kwargs={"connect_timeout": 5, "autocommit": True}, name="cutover",
                  check=_check_connection, configure=_configure)
        with self._errors("connecting"):
            deadline = time.monotonic() + 10
            self.pool.open(wait=False)
            self.pool.settled.wait(10)  # a first connection, or a refusal for good
            if self.pool.refusal is not None:  # no such database, role...: say so at once
                self.pool.close()
                raise AccessRefusedError(f"PostgreSQL at {self._url}: {self.pool.refusal}")
            try:
                self.pool.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except psycopg_pool.PoolTimeout:
                # The pool's own error says only that it timed out; its attempts' reason (no
                # such database, role or password refused...) went to its log. One direct
                # attempt names it in the error.
                self.pool.close()
                with psycopg.connect(url, connect_timeout=5):
                    pass
                raise
        self._workers: dict[str, int] = {}
        self._skipped: set[int] = set()
        self._lock = threading.Lock()
        self.features: dict[str, bool] = {}
        self._identity: StoreIdentity | None = None
        self._place: tuple[str, str] | None = None
        self._joined: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        if apply_schema:
            self.ensure_schema()

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"ProcrastinateBackend({self._url!r})"

    def identity(self) -> StoreIdentity:
        """``postgresql:<system_identifier>/<database>/<schema of procrastinate_jobs>``; where
        ``pg_control_system()`` is not allowed, a marker row of this database stands in for the
        cluster (``postgresql-marker:<marker>/...``)."""
        if self._identity is not None:
            return self._identity
        try:
            with self._tx("reading the store's identity") as conn:
                cluster = conn.execute(sql.query("store_system")).fetchone()
                kind = "postgresql"
        except BackendError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
                raise
            with self._tx("reading the store's marker") as conn:
                conn.execute(sql.query("store_marker"))
                cluster = conn.execute(sql.query("store_marker_read")).fetchone()
                kind = "postgresql-marker"
        with self._tx("reading the store's identity") as conn:
            place = conn.execute(sql.query("store_place")).fetchone()
        assert cluster is not None and place is not None
        self._identity = StoreIdentity(f"{kind}:{cluster[0]}/{place[0]}/{place[1]}", self._url)
        return self._identity

    def read_cutover_marker(self) -> str | None:
        """The cut-over marker's text, or None (no marker table: never in a cut-over); see
        cutover/marker.py."""
        try:
            with self._tx("reading the cut-over marker") as conn:
                row = conn.execute(sql.query("cutover_marker_read")).fetchone()
        except BackendError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
                return None
            raise
        return None if row is None else str(row[0])

    def write_cutover_marker(self, text: str) -> None:
        """Write (overwrite) the cut-over marker, creating its table the first time."""
        with self._tx("writing the cut-over marker") as conn:
            conn.execute(sql.query("cutover_marker_table"))
            conn.execute(sql.query("cutover_marker_write"), {"marker": text})

    # -- plumbing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except CutoverError:
            raise
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            refusal = refused_for_good(str(exc))
            if refusal is not None:
                raise AccessRefusedError(f"PostgreSQL at {self._url}: {refusal}") from exc
            raise BackendUnavailableError(
                f"PostgreSQL at {self._url} is unreachable while {doing}: "
                f"{redact_text(str(exc), *self._secrets)}") from exc
        except psycopg.Error as exc:
            raise BackendError(f"PostgreSQL at {self._url} failed while {doing}: "
                               f"{redact_text(str(exc), *self._secrets)}") from exc

    @contextlib.contextmanager
    def _tx(self, doing: str) -> Iterator[psycopg.Connection[TupleRow]]:
        with self._errors(doing), self.pool.connection() as conn, conn.transaction():
            yield conn

    def ensure_schema(self) -> dict[str, bool]:
        """Apply procrastinate's schema and the adapter's tables when absent; safe to run from
        many processes at once. Returns the features detected."""
        with self._tx("checking the schema") as conn:
            row = conn.execute(sql.query("schema_present")).fetchone()
            if not (row and row[0] and row[1]):
                conn.execute(sql.query("schema_lock"))
                row = conn.execute(sql.query("schema_present")).fetchone()
                if not (row and row[0]):
                    # Imported here: procrastinate's import costs every worker's start-up
                    # (~0.1 s) and only this needs it.
                    from procrastinate.schema import SchemaManager

                    conn.execute(SchemaManager.get_schema())
                conn.execute(sql.schema())
            feats = conn.execute(sql.query("schema_features")).fetchone()
        assert feats is not None
        self.features = {"retry_v2": bool(feats[0]), "workers": bool(feats[1]),
                         "defer_jobs_v1": bool(feats[2])}
        if not (self.features["workers"] and self.features["defer_jobs_v1"]):
            raise ConfigurationError(f"the procrastinate schema at {self._url} is older than "
                                     "3.0; apply procrastinate's migrations first")
        return self.features

    # -- limits ----------------------------------------------------------------------------
    def cannot_hold(self, record: JobRecord) -> list[str]:
        """What procrastinate's tables cannot hold (checked by audit before anything moves):
        names longer than procrastinate_jobs' varchar(128), a queue name over the 40 bytes its
        notification channel leaves (any insert into it fails), text PostgreSQL refuses (NUL, lone
        surrogates), ids with a line break (ids travel one per line), integers beyond
        ``integer``, retry waits jsonb cannot hold, run-at on the hold marker, args beyond
        jsonb's size; an id ``pg-N`` that names procrastinate's own job N here."""
        out = [*text_limits(record.id, "job id", newline=False, empty=False),
               *text_limits(record.queue, "queue name", max_chars=NAME_MAX),
               *text_limits(record.task, "task name", max_chars=NAME_MAX, empty=False),
               *text_limits(record.job_key, "job key"), *text_limits(record.error, "error"),
               *text_limits(record.origin, "origin")]
        for value, what in ((record.priority, "priority"), (record.attempts, "attempts"),
                            (record.max_attempts, "max attempts")):
            out += int_limits(value, what)
        size = len(record.queue.encode("utf-8", "surrogatepass"))
        if size > QUEUE_BYTES_MAX:
            out.append(f"queue name is {size} bytes long (at most {QUEUE_BYTES_MAX}: procrastinate "
                       "notifies its workers on a channel named after the queue, and PostgreSQL "
                       "channel names are at most 63 bytes)")
        if not all(math.isfinite(i) for i in record.retry_intervals):
            out.append("a retry wait is not a finite number (jsonb cannot hold it)")
        if NATIVE.match(record.id):
            with self._tx("checking a job id") as conn:
                out += self._native_clashes(conn, [record.id]).values()
        if record.run_at is not None and record.run_at >= FAR:
            out.append(f"run-at {record.run_at.isoformat()} is at or after {FAR.date()}, the "
                       "mark of a held job here")
        return out + size_limits(record, "a jsonb value", JSONB_MAX)

    def _native_clashes(self, conn: psycopg.Connection[TupleRow],
                        job_ids: Sequence[str]) -> dict[str, str]:
        """Why each incoming id of the form ``pg-N`` would be confused with procrastinate's own
        job N (the name this adapter gives a plain job): job N is a plain job here, or the id
        sequence has not reached N yet. A job cutover moved away from here is held (a
        cutover_jobs row) or deleted, so its id comes back freely."""
        native = native_ids(job_ids)
        if not native:
            return {}
        clash = {int(row[0]) for row in conn.execute(sql.query("native_clashes"),
                                                    {"native": native}).fetchall()}
        return {i: (f"id {i} is how this adapter names procrastinate's own job {n} in this "
                    "database, a different job: give the job another id on its source")
                for i in job_ids if (m := NATIVE.match(i)) and (n := int(m.group(1))) in clash}

    def _select(self, conn: psycopg.Connection[TupleRow], where: LiteralString,
                params: dict[str, Any]) -> list[JobRecord]:
        query = sql.query("select_jobs") + " WHERE " + where + " ORDER BY j.id"
        return [record_from_row(r) for r in conn.execute(query, params).fetchall()]

    # -- producing -------------------------------------------------------------------------
    def enqueue(self, records: Sequence[JobRecord]) -> list[str]:
        now = utcnow()
        # A waiting record is written as it is (both states are 'todo', and the writers fill
        # an empty origin with this backend's name): a copy a job cost a batch a tenth.
        fresh = [r if r.state in (JobState.QUEUED, JobState.SCHEDULED) else
                 r.replace(state=JobState.SCHEDULED if r.run_at and r.run_at > now
                           else JobState.QUEUED, origin=r.origin or self.name) for r in records]
        if len(fresh) == 1:
            return [self._enqueue_one(fresh[0])]
        return self._insert(fresh, mode="enqueue")[0]

    def enqueue_tx(self, records: Sequence[JobRecord], *, tx_hook: TxHook | None = None,
                   conn: psycopg.Connection[Any] | None = None) -> list[str]:
        """:meth:`enqueue` in one transaction that ``tx_hook`` (given the connection) joins,
        on ``conn`` when given: the caller's own connection, whose transaction the jobs then
        commit or roll back with (a savepoint inside it; nothing is committed here).

        One job on our own connection is ``cutover_enqueue_v1`` and the hook's statements
        between BEGIN and COMMIT (before: the batch path's id lookups, sequence, departures
        and two COPYs, about ten round trips). Pipelining those four measured no faster here:
        psycopg's pipeline costs more in Python than the round trips it saves on a local
        server."""
        now = utcnow()
        fresh = [r if r.state in (JobState.QUEUED, JobState.SCHEDULED) else
                 r.replace(state=JobState.SCHEDULED if r.run_at and r.run_at > now
                           else JobState.QUEUED, origin=r.origin or self.name) for r in records]
        if len(fresh) == 1 and conn is None and tx_hook is not None:
            return [self._enqueue_one(fresh[0], tx_hook)]
        return self._insert(fresh, mode="enqueue", tx_hook=tx_hook, conn=conn)[0]

    def enqueue_with(self, record: JobRecord, statement: Any,
                     params: Mapping[str, Any]) -> str:
        """One job (:meth:`enqueue`'s rules) and ``statement`` in one SQL statement
        (``enqueue_with``): one round trip and one commit. ``params`` are ``statement``'s,
        named apart from the job's."""
        now = utcnow()
        r = record
        if r.state not in (JobState.QUEUED, JobState.SCHEDULED):
            r = r.replace(state=JobState.SCHEDULED if r.run_at and r.run_at > now
                          else JobState.QUEUED, origin=r.origin or self.name)
        job = self._one_params(r)
        clash = set(job) & set(params)
        if clash:
            raise ValueError(f"parameters named like the job's: {sorted(clash)}")
        query = SQL(sql.query("enqueue_with")).format(companion=statement)
        with self._errors("enqueuing a job"), self.pool.connection() as conn:
            row = conn.execute(query, {**job, **params}).fetchone()
        assert row is not None
        return str(row[0])

    def _one_params(self, r: JobRecord) -> dict[str, Any]:
        """The parameters of ``cutover_enqueue_v1`` for one job."""
        try:
            args, positional, _, memory = encoded(r)
        except CutoverError as exc:
            raise JobError(str(exc), job_id=r.id) from exc
        return {
            "id": r.id, "queue": r.queue, "task": r.task, "priority": r.priority,
            "key": r.job_key, "args": args, "run_at": r.run_at, "attempts": r.attempts,
            "max_attempts": r.max_attempts, "intervals": to_json(list(r.retry_intervals)),
            "positional": positional, "origin": r.origin or self.name,
            "created_at": r.created_at or utcnow(), "native": memory}

    def _enqueue_one(self, r: JobRecord, tx_hook: TxHook | None = None) -> str:
        """One job in one round trip (``cutover_enqueue_v1``, sql/schema.sql): the same rules
        as :meth:`_insert` (existing id, live job key), on an autocommit connection; with
        ``tx_hook``, in a transaction the hook's statements join."""
        params = self._one_params(r)
        with self._errors("enqueuing a job"), self.pool.connection() as conn:
            if tx_hook is None:
                row = conn.execute(sql.query("enqueue_one"), params).fetchone()
            else:
                with conn.transaction():
                    row = conn.execute(sql.query("enqueue_one"), params).fetchone()
                    tx_hook(conn)
        assert row is not None
        return str(row[0])

    def put(self, records: Sequence[JobRecord], *,
            tx_hook: TxHook | None = None) -> list[str]:
        for r in records:
            if r.state is JobState.STARTED:
                raise JobError("a running job cannot be put; let it finish first", job_id=r.id)
            if r.problem:
                raise JobError(f"cannot put a job with a problem: {r.problem}", job_id=r.id)
        ids, inserted = self._insert(list(records), mode="put", tx_hook=tx_hook)
        return [i for i in ids if i in inserted]

    @contextlib.contextmanager
    def _tx_on(self, doing: str, conn: psycopg.Connection[Any] | None
               ) -> Iterator[psycopg.Connection[Any]]:
        """A transaction of our pool's, or a savepoint in the caller's transaction on its conn
        (an autocommit conn: a transaction of its own, committed here)."""
        if conn is None:
            with self._tx(doing) as own:
                yield own
            return
        with self._errors(doing):
            self._same_place(conn)
            if not conn.autocommit and (conn.info.transaction_status
                                        == psycopg.pq.TransactionStatus.IDLE):
                # psycopg's transaction() on an idle connection would COMMIT at its end: open
                # the caller's transaction first, so that ours is a savepoint inside it.
                conn.execute("SELECT 1")
            with conn.transaction():
                yield conn

    def key_holders(self, job_keys: Sequence[str]) -> dict[str, str]:
        """``{job_key: id}`` of the live jobs holding ``job_keys`` (enqueue's rule)."""
        wanted = sorted(set(job_keys))
        if not wanted:
            return {}
        with self._tx("looking up job keys") as conn:
            rows = conn.execute(sql.query("live_key_holders"), {"keys": wanted}).fetchall()
        return {str(row[0]): str(row[1]) for row in rows}

    def _same_place(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse a caller's connection to another database (or procrastinate schema) than
        ours: jobs written on it would commit there, out of reach of this backend's workers,
        under an id the caller takes for ours. Checked once per connection."""
        if conn in self._joined:
            return
        row = conn.execute(sql.query("store_place")).fetchone()
        if self._place is None:
            with self._tx("reading the store's place") as own:
                mine = own.execute(sql.query("store_place")).fetchone()
            assert mine is not None
            self._place = (str(mine[0]), str(mine[1]))
        assert row is not None
        theirs = (str(row[0]), str(row[1]))
        if theirs != self._place:
            raise ConfigurationError(
                f"enqueue(connection=...): the connection is to database {theirs[0]!r} (schema "
                f"{theirs[1]!r}), not to this backend's ({self._place[0]!r}, schema "
                f"{self._place[1]!r}, {self._url}): jobs written there would never reach its "
                f"workers. Pass a connection to the target's database")
        self._joined.add(conn)

    def _insert(self, records: list[JobRecord], mode: str, tx_hook: TxHook | None = None,
                conn: psycopg.Connection[Any] | None = None) -> tuple[list[str], set[str]]:
        """Insert in one transaction; returns each record's resulting id and the ids inserted."""
        if not records:
            if tx_hook is not None:
                tx_hook(conn)
            return [], set()
        out: dict[int, str] = {}
        with self._tx_on(f"{mode}ing jobs", conn) as conn:
            keys = sorted({r.job_key for r in records if r.job_key is not None})
            holders: dict[str, str] = {}
            if keys:
                conn.execute(sql.query("key_lock"), {"keys": keys})
                holders = {row[0]: row[1] for row in conn.execute(
                    sql.query("live_key_holders"), {"keys": keys}).fetchall()}
            ids = [r.id for r in records]
            if mode == "put":
                for job_id, reason in self._native_clashes(conn, ids).items():
                    raise JobConflictError(reason, job_id=job_id)
            existing = {row[0] for row in conn.execute(
                sql.query("existing_ids"), {"ids": lines(ids), "native": native_ids(ids)}
            ).fetchall()}
            todo: list[JobRecord] = []
            seen: set[str] = set()
            for i, r in enumerate(records):
                if r.id in existing or r.id in seen:
                    out[i] = r.id
                    if mode == "put" and r.id in existing:
                        self._check_same(conn, r)
                    continue
                if r.job_key is not None and PUT_STATUS.get(r.state) == "todo":
                    holder = holders.get(r.job_key)
                    if holder is not None:
                        if mode == "put":
                            raise JobConflictError(f"job key {r.job_key!r} is held by live job "
                                                   f"{holder}", job_id=r.id)
                        out[i] = holder
                        continue
                    holders[r.job_key] = r.id
                seen.add(r.id)
                out[i] = r.id
                todo.append(r)
            if todo:
                self._write(conn, todo)
            if tx_hook is not None:
                tx_hook(conn)
        return [out[i] for i in range(len(records))], {r.id for r in todo}

    def _by_ids(self, conn: psycopg.Connection[TupleRow],
                 job_ids: Sequence[str]) -> list[JobRecord]:
        """Jobs by cutover id: a row of cutover_jobs, or ``pg-N`` for a plain job. (Written as
        an IN over a UNION so that both halves use an index; an OR would scan the table.)"""
        return self._select(conn, sql.query("where_by_ids"), {"ids": lines(job_ids),
                                            "native": native_ids(job_ids)})

    def _check_same(self, conn: psycopg.Connection[TupleRow], record: JobRecord) -> None:
        found = self._by_ids(conn, [record.id])
        if found and found[0].digest() != record.digest():
            raise JobConflictError("a different job with this id exists already",
                                   job_id=record.id,
                                   fields=sorted(found[0].differences(record)))
        if found and record.state.live and not found[0].state.live:
            # Same content, but it ended (cancelled, or run without counting the attempt): a
            # job still to run is not that one (a producer used the id again).
            raise JobConflictError(f"a job with this id exists already and has ended "
                                   f"({found[0].state.value})", job_id=record.id, fields=["state"])

    def _write(self, conn: psycopg.Connection[TupleRow], records: list[JobRecord]) -> None:
        """COPY the jobs into procrastinate_jobs (ids taken from its sequence first) and their
        side rows into cutover_jobs. COPY fires the same triggers (events, NOTIFY) as defer."""
        native_ids = [int(r[0]) for r in conn.execute(sql.query("next_ids"),
                                                       {"n": len(records)}).fetchall()]
        jobs: list[tuple[Any, ...]] = []
        meta: list[tuple[Any, ...]] = []
        now = utcnow()
        for native, r in zip(native_ids, records, strict=True):
            status = PUT_STATUS.get(r.state)
            if status is None:
                raise JobError(f"a {r.state.value} job cannot be written to procrastinate",
                               job_id=r.id)
            try:
                args, positional, result, memory = encoded(r)
            except CutoverError as exc:
                raise JobError(str(exc), job_id=r.id) from exc
            jobs.append((native, r.queue, r.task, r.priority,
                         r.job_key if status == "todo" else None, args, r.run_at, r.attempts,
                         status))
            meta.append((native, r.id, r.max_attempts, to_json(list(r.retry_intervals)),
                         positional, r.origin or self.name, r.created_at or now, r.error,
                         result, memory))
        with conn.cursor() as cur:
            cur.execute(sql.query("clear_departures"), {"ids": lines([r.id for r in records])})
            with cur.copy(sql.query("copy_jobs")) as copy:
                for row in jobs:
                    copy.write_row(row)
            with cur.copy(sql.query("copy_meta")) as copy:
                for row in meta:
                    copy.write_row(row)

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._tx(f"reading job {job_id}") as conn:
            found = self._by_ids(conn, [job_id])
        return found[0] if found else None

    def snapshot(self, *, states: Collection[JobState] | None = None,
                 queues: Collection[str] | None = None,
                 batch_size: int = 1000) -> Iterator[JobRecord]:
        return self._stream(states, queues, batch_size, None)

    def _stream(self, states: Collection[JobState] | None, queues: Collection[str] | None,
                batch_size: int, partition: Partition | None) -> Iterator[JobRecord]:
        """Jobs in id order. A partition is chosen in SQL by a hash of the cutover id (each
        reader gets only its share off the server)."""
        query = (sql.query("select_jobs") + " WHERE " + sql.query("where_snapshot")
                 + " ORDER BY j.id")
        statuses = None if states is None else sorted(
            {status for state in states for status in STATUSES[state]})
        params = {"queues": list(queues) if queues is not None else None, "statuses": statuses,
                  "shares": partition[1] if partition else None,
                  "share": partition[0] if partition else None}
        with self._errors("reading a snapshot"), self.pool.connection() as conn, \
                conn.transaction(), conn.cursor(name="cutover_snapshot") as cur:
            cur.itersize = batch_size
            cur.execute(query, params)
            for row in cur:
                record = record_from_row(row)
                if states is None or record.state in states:
                    yield record

    def batches(self, *, states: Collection[JobState] | None = None,
                queues: Collection[str] | None = None, batch_size: int = 1000,
                partition: Partition | None = None) -> Iterator[list[JobRecord]]:
        """In id order: a server-side cursor, so taking or removing jobs does not move the
        place. Readers of different partitions need not wait for each other here (nothing is
        read by position); each gets its share's batches, full ones."""
        yield from chunked(self._stream(states, queues, batch_size, partition), batch_size)

    def counts(self, queues: Collection[str] | None = None) -> dict[str, dict[JobState, int]]:
        out: dict[str, dict[JobState, int]] = {}
        with self._tx("counting jobs") as conn:
            rows = conn.execute(sql.query("counts"),
                                {"queues": list(queues) if queues is not None else None})
            for queue, state, n in rows.fetchall():
                out.setdefault(queue, dict.fromkeys(JobState, 0))[JobState(state)] += n
        return out

    # -- moving ----------------------------------------------------------------------------
    def _resolve(self, conn: psycopg.Connection[TupleRow],
                 job_ids: Sequence[str]) -> dict[str, int]:
        rows = conn.execute(sql.query("resolve_ids"), {"ids": lines(job_ids),
                                                       "native": native_ids(job_ids)})
        return {str(cutover_id): int(native) for cutover_id, native in rows.fetchall()}

    def take(self, job_ids: Sequence[str], owner: str, *, tx_hook: TxHook | None = None,
             fetch: bool = True) -> TakeResult:
        result = TakeResult()
        if not job_ids:
            return result
        with self._tx("taking jobs") as conn:
            resolved = self._resolve(conn, job_ids)
            locked = {row[0]: (row[1], row[2]) for row in conn.execute(
                sql.query("lock_for_take"), {"ids": list(resolved.values())}).fetchall()}
            to_hold: list[int] = []
            for job_id in job_ids:
                native = resolved.get(job_id)
                if native is None or native not in locked:
                    result.refused[job_id] = "missing"
                    continue
                status, held_by = locked[native]
                if held_by is not None:
                    if held_by != owner:
                        result.refused[job_id] = f"held by {held_by}"
                elif status != "todo":
                    result.refused[job_id] = {"doing": "started", "succeeded": "finished"}.get(
                        status, status)
                else:
                    to_hold.append(native)
            if to_hold:
                conn.execute(sql.query("hold"), {"owner": owner, "ids": to_hold})
            ok = [n for j, n in resolved.items() if j not in result.refused]
            result.taken = self._select(conn, "j.id = ANY(%(ids)s::bigint[])", {"ids": ok})
            result.taken_ids = [r.id for r in result.taken]
            if tx_hook is not None:
                tx_hook(conn)
        return result

    def give_back(self, job_ids: Sequence[str], owner: str) -> int:
        if not job_ids:
            return 0
        with self._tx("giving jobs back") as conn:
            natives = list(self._resolve(conn, job_ids).values())
            return len(conn.execute(sql.query("give_back"),
                                    {"owner": owner, "ids": natives}).fetchall())

    def remove(self, job_ids: Sequence[str], *, tx_hook: TxHook | None = None) -> int:
        """Delete jobs. Removing a job that has not ended leaves no departure record (it is the
        toolkit moving it away), so verify can never read it as an end."""
        with self._tx("removing jobs") as conn:
            natives = list(self._resolve(conn, job_ids).values()) if job_ids else []
            conn.execute(sql.query("moving_away"))
            removed = conn.execute(sql.query("delete_jobs"), {"ids": natives}).rowcount
            if tx_hook is not None:
                tx_hook(conn)
            return removed

    def departures(self, job_ids: Sequence[str]) -> dict[str, Departure]:
        """From ``cutover_departed``, written by a trigger on every deletion of a job cutover
        put here (see sql/schema.sql): finished when the row was in a final state, or was
        deleted by procrastinate's own finish or cancel."""
        if not job_ids:
            return {}
        with self._tx("reading departures") as conn:
            rows = conn.execute(sql.query("departures"), {"ids": lines(job_ids)}).fetchall()
        return {job_id: Departure(finished=bool(finished), status=status,
                                  evidence=f"procrastinate job {how} (cutover_departed)",
                                  at=at)
                for job_id, status, finished, how, at in rows}

    def pause(self, queues: Collection[str] | None = None) -> None:
        with self._tx("pausing") as conn:
            conn.execute(sql.query("pause"), {"queues": list(queues or ["*"])})

    def resume(self, queues: Collection[str] | None = None) -> None:
        with self._tx("resuming") as conn:
            if queues is None:
                conn.execute(sql.query("resume_all"))
            else:
                conn.execute(sql.query("resume"), {"queues": list(queues)})

    def paused(self) -> set[str]:
        with self._tx("reading pauses") as conn:
            return {row[0] for row in conn.execute(sql.query("paused")).fetchall()}

    # -- working ---------------------------------------------------------------------------
    #: candidates one claim looks at before it gives up (each refused one is skipped after)
    _CLAIM_TRIES = 20

    def _worker_id(self, conn: psycopg.Connection[TupleRow], worker: str) -> int:
        with self._lock:
            known = self._workers.get(worker)
        if known is not None:
            return known
        row = conn.execute(sql.query("register_worker")).fetchone()
        assert row is not None
        with self._lock:
            self._workers[worker] = int(row[0])
        return int(row[0])

    def forget_skipped(self) -> None:
        """Offer the jobs this worker refused again (the phase gate calls it when its mode
        changes: a copy a dry run left in place runs in the next mode)."""
        with self._lock:
            self._skipped.clear()

    def claim(self, queues: Sequence[str] | None, worker: str,
              accept: Acceptor) -> JobRecord | None:
        """One statement starts the next runnable job and reads it (claim_one): one round
        trip, as procrastinate's own fetch. A job this worker refuses is put back to waiting
        (unclaim) and skipped from then on; the next candidate is tried."""
        return self._claim(queues, worker, accept, None)

    def claim_tx(self, queues: Sequence[str] | None, worker: str, accept: Acceptor,
                 tx_hook: ClaimHook) -> JobRecord | None:
        """:meth:`claim` in a transaction that ``tx_hook(conn, job)`` joins (the fence's claim,
        when the control plane is in this database: one commit, and no started job without
        its claim)."""
        return self._claim(queues, worker, accept, tx_hook)

    def unclaim(self, job: JobRecord, worker: str) -> bool:
        """Give back a job this worker claimed and has not run (the fence's claim could not be
        made): waiting again, no attempt used. False when it was not this worker's any more."""
        with self._tx(f"giving back job {job.id}") as conn:
            worker_id = self._worker_id(conn, worker)
            return conn.execute(sql.query("unclaim"), {"id": int(job.native_id or 0),
                                                       "worker_id": worker_id}).rowcount > 0

    def _claim(self, queues: Sequence[str] | None, worker: str, accept: Acceptor,
               tx_hook: ClaimHook | None) -> JobRecord | None:
        with self._errors("claiming a job"), self.pool.connection() as conn:
            worker_id = self._worker_id(conn, worker)
            for _ in range(self._CLAIM_TRIES):
                with self._lock:
                    skip = list(self._skipped)
                with contextlib.nullcontext() if tx_hook is None else conn.transaction():
                    row = conn.execute(sql.query("claim_one"), {
                        "queues": list(queues) if queues else None, "skip": skip,
                        "worker_id": worker_id}).fetchone()
                    if row is None:
                        return None
                    record = record_from_row(row)
                    if accept(record) is not None or record.problem:
                        with self._lock:
                            self._skipped.add(int(record.native_id or 0))
                        conn.execute(sql.query("unclaim"), {"id": int(record.native_id or 0),
                                                            "worker_id": worker_id})
                        continue
                    started = record.replace(state=JobState.STARTED)
                    if tx_hook is not None:
                        tx_hook(conn, started)
                    return started
        return None

    def _outcome(self, conn: psycopg.Connection[TupleRow], job: JobRecord, error: str | None,
                 result: Any) -> None:
        if error is None and result is None:
            conn.execute(sql.query("clear_outcome"), {"id": int(job.native_id or 0)})
            return
        try:
            stored = Jsonb(codec.encode(result)) if result is not None else None
        except CutoverError:
            stored = Jsonb(repr(result))
        conn.execute(sql.query("upsert_outcome"), {"id": int(job.native_id or 0),
                                                   "error": error, "result": stored})

    @contextlib.contextmanager
    def _pipelined(self, doing: str) -> Iterator[psycopg.Connection[TupleRow]]:
        """A transaction whose statements need no answer before the next: BEGIN, them and
        COMMIT go in one round trip."""
        with self._errors(doing), self.pool.connection() as conn, conn.pipeline(), \
                conn.transaction():
            yield conn

    def complete(self, job: JobRecord, worker: str, result: Any) -> None:
        with self._pipelined(f"recording the outcome of job {job.id}") as conn:
            conn.execute(sql.query("finish_job"), {"id": int(job.native_id or 0),
                                                   "status": "succeeded"})
            self._outcome(conn, job, None, result)

    def complete_tx(self, job: JobRecord, worker: str, result: Any, tx_hook: TxHook) -> None:
        """:meth:`complete` with ``tx_hook`` in its transaction (the fence's finish). The
        connection is in pipeline mode: a statement whose answer the hook reads costs a
        round trip; the commit is still one."""
        with self._pipelined(f"recording the outcome of job {job.id}") as conn:
            conn.execute(sql.query("finish_job"), {"id": int(job.native_id or 0),
                                                   "status": "succeeded"})
            self._outcome(conn, job, None, result)
            tx_hook(conn)

    def fail(self, job: JobRecord, worker: str, error: str,
             retry_at: dt.datetime | None) -> None:
        with self._pipelined(f"recording the outcome of job {job.id}") as conn:
            self._failed(conn, job, error, retry_at)

    def fail_tx(self, job: JobRecord, worker: str, error: str, retry_at: dt.datetime | None,
                tx_hook: TxHook) -> None:
        """:meth:`fail` with ``tx_hook`` in its transaction (see :meth:`complete_tx`)."""
        with self._pipelined(f"recording the outcome of job {job.id}") as conn:
            self._failed(conn, job, error, retry_at)
            tx_hook(conn)

    def run_tx(self, tx_hook: TxHook) -> None:
        """``tx_hook`` alone in a transaction on this backend's pool."""
        with self._tx("running a statement of the caller's") as conn:
            tx_hook(conn)

    def _failed(self, conn: psycopg.Connection[TupleRow], job: JobRecord, error: str,
                retry_at: dt.datetime | None) -> None:
        """A failed attempt: the retry at ``retry_at``, or failed for good (None)."""
        if retry_at is None:
            conn.execute(sql.query("finish_job"), {"id": int(job.native_id or 0),
                                                   "status": "failed"})
        else:
            conn.execute(sql.query("retry_job"), {"id": int(job.native_id or 0),
                                                  "retry_at": retry_at})
        self._outcome(conn, job, error, None)

    def heartbeat(self, worker: str) -> None:
        with self._tx("sending a heartbeat") as conn:
            conn.execute(sql.query("heartbeat"), {"worker_id": self._worker_id(conn, worker)})

    def recover_stalled(self, older_than: float) -> list[str]:
        with self._tx("recovering stalled jobs") as conn:
            rows = conn.execute(sql.query("recover_stalled"), {"seconds": older_than}).fetchall()
            natives = [int(r[0]) for r in rows]
            if not natives:
                return []
            stalled = self._select(conn, "j.id = ANY(%(ids)s::bigint[])", {"ids": natives})
            for job in stalled:
                # The attempt it was on counts, as the worker's fail would record it.
                self._failed(conn, job, *stalled_outcome(job))
            return [job.id for job in stalled]

    def worker_ids(self) -> list[str]:
        """The ``procrastinate_workers`` ids this backend's cutover workers registered (a fleet
        member declares them, so that ``native_workers`` does not count it)."""
        with self._lock:
            return [str(i) for i in self._workers.values()]

    def native_workers(self, exclude: Collection[str] = (),
                       stalled_after: float = 30.0) -> list[NativeWorker]:
        """Rows of ``procrastinate_workers`` with a heartbeat in the last ``stalled_after``
        seconds (procrastinate's own stalled-worker timeout), but for ``exclude`` (ids fleet
        members declared) and this backend's own."""
        mine = set(self.worker_ids())
        with self._tx("listing procrastinate's workers") as conn:
            rows = conn.execute(sql.query("native_workers"),
                                {"seconds": stalled_after}).fetchall()
        return [NativeWorker(str(r[0]), f"last heartbeat {r[1].isoformat()}") for r in rows
                if str(r[0]) not in exclude and str(r[0]) not in mine]

    def close(self) -> None:
        with contextlib.suppress(Exception), self._tx("unregistering workers") as conn:
            for worker_id in self._workers.values():
                conn.execute(sql.query("unregister_worker"), {"worker_id": worker_id})
        self.pool.close()
