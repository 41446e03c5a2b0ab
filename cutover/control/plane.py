"""The control plane's plumbing: where it lives, its connection, its SQL, its schema migrations.

The control schema lives in the PostgreSQL database of whichever side is PostgreSQL (or the one
``--control`` names), in the schema its caller names (``Settings.schema``: ``CUTOVER_SCHEMA``,
default ``cutover``). Each table
family keeps its SQL in ``sql/<family>.sql`` as named blocks; the schema itself is built by the
numbered files in ``migrations/`` (see :mod:`cutover.control.migrations`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any, LiteralString, Protocol, cast

import psycopg
from psycopg import sql

from cutover import adapters
from cutover.backend import StoreIdentity
from cutover.control import migrations
from cutover.errors import (
    AccessRefusedError,
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    refused_for_good,
)
from cutover.settings import DEFAULT_SCHEMA, POOLING, ControlPooling
from cutover.urls import ambiguity, redact, redact_text, secrets_of

log = logging.getLogger("cutover.control")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
PG_SCHEMES = ("postgresql", "postgres")
#: The families whose named blocks ``ControlPlane.query`` serves (cutover/control/sql/*.sql).
FAMILIES = ("plane", "ledger", "runs", "verify", "phase", "fleet", "claims")
#: :meth:`Plumbing.statement` on the plane's own connection: the waits (seconds) between its
#: tries when the connection is lost or refused (a new connection each try): 6 tries over ~4 s.
RETRY_WAITS = (0.05, 0.2, 0.5, 1.0, 2.0)


class Executes(Protocol):
    """What a :meth:`Plumbing.statement` body runs its one statement on."""

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor[Any]: ...


class _Retrying:
    """The plane's own connection for one statement: :meth:`execute` runs it, and when the
    connection is lost (terminated, reset) or cannot be made, runs it again on a new
    connection after a wait (:data:`RETRY_WAITS`), then gives up with the last error. Only for
    statements that give the same answer when run again after an unknown outcome (the fence's
    verbs, keyed by job and member: see sql/claims.sql)."""

    def __init__(self, plane: Plumbing, doing: str) -> None:
        self.plane = plane
        self.doing = doing

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor[Any]:
        waits = iter(RETRY_WAITS)
        while True:
            try:
                return self.plane.connection().execute(query, params)
            except (psycopg.OperationalError, psycopg.InterfaceError,
                    BackendUnavailableError) as exc:
                self.plane._drop()
                wait = next(waits, None)
                if wait is None:
                    raise
                log.warning("control plane at %s: connection lost while %s (%s); trying "
                            "again in %.2fs on a new connection", self.plane.redacted_url,
                            self.doing, self.plane.scrub(str(exc)).strip(), wait,
                            extra={"event": "control_retry"})
                time.sleep(wait)


def parse_blocks(text: str) -> dict[str, str]:
    """``-- name: NAME`` blocks of one SQL file, each without its trailing semicolon."""
    parts = _NAME.split(text)
    return {n: b.strip().rstrip(";") for n, b in zip(parts[1::2], parts[2::2], strict=True)}


@functools.cache
def blocks() -> dict[str, str]:
    """Every family's named blocks, read once. A name is unique across families."""
    found: dict[str, str] = {}
    for family in FAMILIES:
        text = resources.files("cutover.control").joinpath("sql", f"{family}.sql")
        for name, block in parse_blocks(text.read_text("utf-8")).items():
            if name in found:
                raise RuntimeError(f"SQL block {name!r} is defined twice ({family}.sql)")
            found[name] = block
    return found


def backend_key(url: str) -> str:
    """A backend as a person reads it: adapter and redacted URL. (The ledger, the runs and the
    pair lock key on :class:`~cutover.backend.StoreIdentity` instead; earlier versions keyed
    them on this.)"""
    name, inner = adapters.split(url)
    return f"{name}+{redact(inner)}"


def control_url(source: str | None, target: str | None, explicit: str | None = None) -> str:
    """The PostgreSQL URL of the control plane: ``explicit``, else the PostgreSQL side."""
    if explicit:
        return explicit.split("+", 1)[1] if "+" in explicit.split("://", 1)[0] else explicit
    for url in (target, source):
        if url:
            _, inner = adapters.split(url)
            if inner.split("://", 1)[0].lower() in PG_SCHEMES:
                return inner
    raise ConfigurationError("no PostgreSQL side for the control plane: pass --control URL (or "
                             "CUTOVER_CONTROL) naming a PostgreSQL database")


def pooling_declared(pooling: str) -> bool | None:
    """The caller's pooling (``Settings.control_pooling``: ``CUTOVER_CONTROL_POOLING``): True
    for ``transaction``, False for ``session``, None for ``auto`` (then the plane probes)."""
    value = pooling.strip().lower()
    if value not in POOLING:
        raise ConfigurationError(f"CUTOVER_CONTROL_POOLING={pooling!r}: expected "
                                 f"{', '.join(POOLING)}")
    return None if value == "auto" else value == "transaction"


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    """The server backend serving this statement (behind a transaction pooler it may differ
    from one transaction to the next)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return int(row[0]) if row else 0


class Plumbing:
    """Connection, transactions, SQL and schema of the control plane; the table families
    (ledger, runs, phase, fleet, claims) build on it and :class:`ControlPlane` joins them."""

    def __init__(self, url: str, schema: str | None = None, *,
                 pooling: ControlPooling = "auto") -> None:
        self.url = url
        self.schema = schema or DEFAULT_SCHEMA  # the caller's (Settings.schema: CUTOVER_SCHEMA)
        if not _IDENT.match(self.schema):
            raise ConfigurationError(f"CUTOVER_SCHEMA={self.schema!r} is not a valid schema "
                                     "name (lower case letters, digits and _, not starting "
                                     "with a digit)")
        self._redacted = redact(url)
        self._secrets = secrets_of(url)
        problem = ambiguity(url)
        if problem:
            raise ConfigurationError(f"control plane {self._redacted}: {problem}")
        self._local = threading.local()  # one connection per thread (a drain has two)
        #: The caller's (Settings.control_pooling): a plane built from this one passes it on.
        self.pooling = pooling
        self._pooled: bool | None = pooling_declared(pooling)  # None: probed when first asked

    def __repr__(self) -> str:
        return f"ControlPlane({self._redacted!r}, schema={self.schema!r})"

    @property
    def redacted_url(self) -> str:
        return self._redacted

    # -- plumbing --------------------------------------------------------------------------
    def query(self, name: str) -> sql.Composed:
        """A named SQL block with ``{schema}`` filled in."""
        return self.compose(blocks()[name])

    def compose(self, text: str) -> sql.Composed:
        # The SQL comes from this package's own files, never from input: a LiteralString.
        literal: Any = text
        return sql.SQL(cast(LiteralString, literal)).format(schema=sql.Identifier(self.schema))

    def scrub(self, text: str) -> str:
        """``text`` with this plane's passwords hidden."""
        return redact_text(text, *self._secrets)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop()
            refusal = refused_for_good(str(exc))
            if refusal is not None:  # no such database, role...: no retry can help
                raise AccessRefusedError(f"control plane at {self._redacted}: {refusal}"
                                         ) from exc
            raise BackendUnavailableError(
                f"control plane at {self._redacted} is unreachable while {doing}: "
                f"{self.scrub(str(exc))}") from exc
        except psycopg.Error as exc:
            raise BackendError(f"control plane at {self._redacted} failed while {doing}: "
                               f"{self.scrub(str(exc))}") from exc

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
            self._local.conn = None

    def connect(self, doing: str = "connecting") -> psycopg.Connection[Any]:
        """A new autocommit connection of the caller's own (a watcher's LISTEN, a heartbeat)."""
        # Behind a transaction pooler, a server-side prepared statement (psycopg prepares a
        # query run 5 times) may be looked up on another server backend: never prepare there.
        pooled = self._pooled
        with self._errors(doing):
            if pooled:
                return psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                       prepare_threshold=None)
            return psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    def connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.connect()
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def tx(self, doing: str, conn: Any = None) -> Iterator[psycopg.Connection[Any]]:
        """A transaction: the given one (a backend's, to share its commit) or our own."""
        if conn is not None:
            with self._errors(doing):
                yield conn
            return
        with self._errors(doing):
            own = self.connection()
            with own.transaction():
                yield own

    @contextlib.contextmanager
    def statement(self, doing: str, conn: Any = None) -> Iterator[Executes]:
        """For one statement: the given connection (a backend's transaction, to share its
        commit), or our own autocommit connection, where the statement is its own transaction:
        one round trip, where :meth:`tx` adds BEGIN and COMMIT (two more). Only for a single
        statement: two on it would commit one by one.

        On our own connection a lost connection is survived: the statement runs again on a
        new one (:class:`_Retrying`, bounded: :data:`RETRY_WAITS`), so it must be one that
        answers the same when run twice (each fence verb is, by job and member); only then
        :class:`BackendUnavailableError`. In the caller's transaction it is not retried (the
        transaction is lost with its connection: the caller's to retry)."""
        with self._errors(doing):
            yield _Retrying(self, doing) if conn is None else conn

    def close_thread(self) -> None:
        """Close the calling thread's connection, if it has one: a thread that used this plane
        calls it as it ends (its connection would otherwise stay open until the garbage
        collector finds it). The plane stays usable; a later call connects again."""
        self._drop()

    def close(self) -> None:
        """Close the calling thread's connection (the owner's; threads that used the plane
        :meth:`close_thread` their own as they end)."""
        self._drop()

    # -- transaction pooling (PgBouncer pool_mode=transaction) -------------------------------
    def pooled(self) -> bool:
        """Whether this plane's connections go through a transaction pooler, where a session
        (its advisory locks, its LISTEN) does not survive the end of a transaction.

        ``pooling="transaction"|"session"`` (``CUTOVER_CONTROL_POOLING``) says so outright (the
        reliable way); on ``"auto"`` three transactions in a row on one connection must be
        served by one server backend (a pooler that hands them to different backends is
        found; one that happens to reuse the same backend while idle is not: declare it behind
        a pooler)."""
        cached = self._pooled
        if cached is None:
            with self._errors("probing for a transaction pooler"):
                conn = self.connection()
                pids = {backend_pid(conn) for _ in range(3)}
                cached = len(pids) > 1
            self._pooled = cached
            if cached:
                self._drop()  # reconnect without prepared statements (see connect)
        return cached

    def require_session(self, what: str) -> None:
        """Refuse (exit 2) ``what``, which needs a session-level feature, behind a pooler."""
        if self.pooled():
            raise ConfigurationError(
                f"{what} needs a session connection, but the control plane at "
                f"{self._redacted} is behind a transaction pooler (PgBouncer "
                f"pool_mode=transaction): its session advisory locks would not survive. Point "
                f"--control (CUTOVER_CONTROL) at PostgreSQL directly or at a pool in session "
                f"mode.")

    # -- schema ----------------------------------------------------------------------------
    def init(self) -> bool:
        """Create or upgrade the control schema: apply the migrations it lacks, in order, in one
        transaction under a transaction-scoped advisory lock (safe from many processes at once,
        and behind a transaction pooler). Returns True when the schema was created now."""
        with self.tx("migrating the control schema") as conn:
            return migrations.apply(conn, self.compose, self.schema)

    def schema_version(self) -> int | None:
        """The migration the control schema is at; 0 for a schema of an unversioned earlier
        version; None when there is none."""
        with self.tx("reading the control schema") as conn:
            return migrations.current(conn, self.schema)

    def initialized(self) -> bool:
        return self.schema_version() is not None

    def require(self) -> None:
        """Refuse (exit 2, saying what to do) unless the control schema is at this code's
        version: absent or older -> run ``cutover init``; newer -> upgrade queue-cutover."""
        version = self.schema_version()
        latest = migrations.latest()
        where = f"the control schema {self.schema!r} at {self._redacted}"
        if version is None:
            raise ConfigurationError(f"{where} does not exist: run `cutover init` first")
        if version > latest:
            raise ConfigurationError(
                f"{where} is at version {version}, newer than this queue-cutover knows "
                f"({latest}): upgrade queue-cutover on this host (its code would misread "
                f"the schema)")
        if version < latest:
            raise ConfigurationError(
                f"{where} is at version {version}, older than this queue-cutover's ({latest}): "
                f"run `cutover init` to upgrade it (additive, safe while jobs run)")

    def identity(self) -> str:
        """The database this plane lives in, whatever the URL's spelling (``127.0.0.1`` or
        ``localhost``, a Unix socket, options, credentials): ``postgresql:<system
        identifier>/<database>``, or ``postgresql-db:<database oid>/<database>`` where
        ``pg_control_system()`` is not allowed (the cluster then unknown: two clusters with a
        database of the same name and oid would look alike). The schema is not in it: the
        cut-over marker compares it apart. Read once."""
        found: str | None = getattr(self, "_identity", None)
        if found is not None:
            return found
        with self.tx("reading the control plane's database") as conn:
            place = conn.execute(self.query("plane_place")).fetchone()
        assert place is not None
        try:
            with self.tx("reading the control plane's cluster") as conn:
                row = conn.execute(self.query("plane_system")).fetchone()
            found = f"postgresql:{row[0] if row else '?'}/{place[0]}"
        except BackendError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
                raise
            found = f"postgresql-db:{place[1]}/{place[0]}"
        self._identity = found
        return found

    @functools.lru_cache(maxsize=64)  # noqa: B019 (few stores, one control plane a command)
    def describe(self, key: str) -> str:
        """A store key as a person reads it: the redacted URL it was last reached by (the key
        itself for a store the control plane has not met)."""
        with self.tx("reading the stores") as conn:
            row = conn.execute(self.query("store_url"), {"key": key}).fetchone()
        return str(row[0]) if row else key

    def meet(self, store: StoreIdentity, url: str) -> None:
        """Record the URL a store was reached by, for reports; rows an earlier version keyed on
        this URL's spelling (``backend_key``) are moved to the store's identity key."""
        with self.tx("recording the store") as conn:
            conn.execute(self.query("store_seen"), {"key": store.key, "url": store.url})
            row = conn.execute(self.query("adopt_legacy"), {
                "legacy": backend_key(url), "key": store.key}).fetchone()
        if row and row[0]:
            log.warning("ledger rows of %s (an earlier version's key) now belong to the store "
                        "%s: %d", store.url, store.key, row[1])
