"""The control plane: the phase, the ledger, failure records and drain runs, in PostgreSQL.

It lives in the database of whichever side is PostgreSQL (or the one ``--control`` names), in
the schema named by ``CUTOVER_SCHEMA`` (default ``cutover``). SQL is in ``sql/control.sql``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import Any, LiteralString, cast

import psycopg
from psycopg import sql

from cutover import adapters
from cutover.backend import StoreIdentity
from cutover.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    UnsupportedValueError,
)
from cutover.record import JobRecord
from cutover.urls import ambiguity, redact, redact_text, secrets_of

log = logging.getLogger("cutover.control")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
PG_SCHEMES = ("postgresql", "postgres")


@functools.cache
def _blocks() -> dict[str, str]:
    text = resources.files("cutover").joinpath("sql", "control.sql").read_text("utf-8")
    parts = _NAME.split(text)
    return {n: b.strip().rstrip(";") for n, b in zip(parts[1::2], parts[2::2], strict=True)}


def backend_key(url: str) -> str:
    """A backend as a person reads it: adapter and redacted URL. (The ledger, the runs and the
    pair lock key on :class:`~cutover.backend.StoreIdentity` instead; earlier versions keyed
    them on this.)"""
    name, inner = adapters.split(url)
    return f"{name}+{redact(inner)}"


def schema_name() -> str:
    name = os.environ.get("CUTOVER_SCHEMA", "cutover")
    if not _IDENT.match(name):
        raise ConfigurationError(f"CUTOVER_SCHEMA={name!r} is not a valid schema name (lower "
                                 "case letters, digits and _, not starting with a digit)")
    return name


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


class ControlPlane:
    """The control schema in one PostgreSQL database."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        self.url = url
        self.schema = schema or schema_name()
        if not _IDENT.match(self.schema):
            raise ConfigurationError(f"schema {self.schema!r} is not a valid schema name")
        self._redacted = redact(url)
        self._secrets = secrets_of(url)
        problem = ambiguity(url)
        if problem:
            raise ConfigurationError(f"control plane {self._redacted}: {problem}")
        self._local = threading.local()  # one connection per thread (a drain has two)

    def __repr__(self) -> str:
        return f"ControlPlane({self._redacted!r}, schema={self.schema!r})"

    # -- plumbing --------------------------------------------------------------------------
    def query(self, name: str) -> sql.Composed:
        text: Any = _blocks()[name]
        return sql.SQL(cast(LiteralString, text)).format(schema=sql.Identifier(self.schema))

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop()
            raise BackendUnavailableError(
                f"control plane at {self._redacted} is unreachable while {doing}: "
                f"{redact_text(str(exc), *self._secrets)}") from exc
        except psycopg.Error as exc:
            raise BackendError(f"control plane at {self._redacted} failed while {doing}: "
                               f"{redact_text(str(exc), *self._secrets)}") from exc

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
            self._local.conn = None

    def connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            with self._errors("connecting"):
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
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

    def close(self) -> None:
        self._drop()

    # -- schema ----------------------------------------------------------------------------
    def init(self) -> bool:
        """Create the control schema if absent (idempotent, safe from many processes at once).
        Returns True when it was created now."""
        with self.tx("creating the control schema") as conn:
            existed = conn.execute(self.query("present"),
                                   {"table": f"{self.schema}.ledger"}).fetchone()
            conn.execute(self.query("lock"))
            conn.execute(self.query("create"))
        return not (existed and existed[0])

    def initialized(self) -> bool:
        with self.tx("reading the control schema") as conn:
            row = conn.execute(self.query("present"),
                               {"table": f"{self.schema}.ledger"}).fetchone()
        return bool(row and row[0])

    def require(self) -> None:
        if not self.initialized():
            raise ConfigurationError(f"the control schema {self.schema!r} does not exist at "
                                     f"{self._redacted}: run `cutover init` first")
        with self.tx("reading the control schema") as conn:
            row = conn.execute(self.query("identity_ready"), {
                "stores": f"{self.schema}.stores", "schema": self.schema}).fetchone()
        if not (row and row[0]):
            raise ConfigurationError(f"the control schema {self.schema!r} at {self._redacted} "
                                     "is from an earlier version (no store identities): run "
                                     "`cutover init` to upgrade it (additive, safe)")

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

    # -- phase -----------------------------------------------------------------------------
    def phase(self) -> dict[str, Any]:
        with self.tx("reading the phase") as conn:
            row = conn.execute(self.query("phase")).fetchone()
        if row is None:
            return {"phase": "off", "epoch": 0}
        return {"phase": row[0], "epoch": row[1], "changed_at": row[2], "changed_by": row[3],
                "reason": row[4]}

    # -- ledger ----------------------------------------------------------------------------
    def record(self, records: Sequence[JobRecord], *, state: str, source: str, target: str,
               run_id: str, conn: Any = None) -> None:
        """Write (or move) the ledger rows of ``records``."""
        if not records:
            return
        rows = [(r.id, r.task, r.queue, r.digest(), r.content_json(), state, source, target,
                 r.native_id, r.origin, run_id) for r in records]
        with self.tx("writing the ledger", conn) as c:
            try:
                with c.transaction(), c.cursor() as cur, \
                        cur.copy(self.query("ledger_copy_direct")) as copy:
                    for row in rows:
                        copy.write_row(row)
                return
            except psycopg.errors.UniqueViolation:
                pass  # some of these jobs have rows already: rolled back to the savepoint
            c.execute(self.query("ledger_stage"))
            with c.cursor() as cur, cur.copy(self.query("ledger_copy")) as copy:
                for row in rows:
                    copy.write_row(row)
            c.execute(self.query("ledger_upsert"))

    def mark(self, ids: Sequence[str], *, state: str, source: str, target: str,
             conn: Any = None) -> None:
        if not ids:
            return
        with self.tx("updating the ledger", conn) as c:
            c.execute(self.query("ledger_mark"), {"ids": "\n".join(ids), "state": state,
                                                  "source": source, "target": target})

    def forget(self, ids: Sequence[str], *, source: str, target: str) -> None:
        """Delete intent rows (``moving``) of jobs that did not move after all: the target
        refused them and they went back to the source."""
        if not ids:
            return
        with self.tx("updating the ledger") as c:
            c.execute(self.query("ledger_forget"), {"ids": list(ids), "source": source,
                                                    "target": target})

    def unfinished(self, source: str, target: str) -> list[tuple[str, str, str]]:
        """Ledger rows of moves from source to target that did not finish: (id, state, digest)."""
        with self.tx("reading the ledger") as conn:
            rows = conn.execute(self.query("ledger_unfinished"),
                                {"source": source, "target": target}).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def pair_history(self, source: str, target: str) -> tuple[bool, int]:
        """Whether any job was moved from source to target; how many went the other way."""
        with self.tx("reading the ledger") as conn:
            row = conn.execute(self.query("ledger_pair_history"),
                               {"source": source, "target": target}).fetchone()
        return (bool(row[0]), int(row[1])) if row else (False, 0)

    def summary(self) -> list[dict[str, Any]]:
        with self.tx("reading the ledger") as conn:
            rows = conn.execute(self.query("ledger_summary")).fetchall()
        return [{"source": r[0], "target": r[1], "state": r[2], "jobs": r[3]} for r in rows]

    def failures_summary(self) -> dict[str, int]:
        with self.tx("reading failures") as conn:
            return {r[0]: r[1] for r in conn.execute(self.query("failures_summary")).fetchall()}

    def fail(self, run_id: str, items: Iterable[tuple[str, str, str, str]]) -> None:
        """Record failures: (cutover id, backend, class, reason)."""
        rows = list(items)
        if not rows:
            return
        with self.tx("recording failures") as conn:
            conn.execute(self.query("failure_add"), {
                "run_id": run_id, "id": [r[0] for r in rows], "backend": [r[1] for r in rows],
                "class": [r[2] for r in rows], "reason": [r[3] for r in rows]})

    # -- runs ------------------------------------------------------------------------------
    def lock_pair(self, source: str, target: str) -> bool:
        """Take the session lock that lets one drain at a time run between two backends."""
        with self._errors("locking the drain"):
            row = self.connection().execute(self.query("pair_lock"),
                                             {"source": source, "target": target}).fetchone()
        return bool(row and row[0])

    def unlock_pair(self, source: str, target: str) -> None:
        with contextlib.suppress(BackendUnavailableError), self._errors("unlocking"):
            self.connection().execute(self.query("pair_unlock"),
                                      {"source": source, "target": target})

    def start_run(self, run_id: str, kind: str, source: str, target: str,
                  options: dict[str, Any]) -> None:
        with self.tx("recording the run") as conn:
            conn.execute(self.query("abandon_runs"), {"source": source, "target": target})
            conn.execute(self.query("run_start"), {
                "run_id": run_id, "kind": kind, "source": source, "target": target,
                "options": json.dumps(options, default=str)})

    def abandon_runs(self, source: str, target: str) -> list[str]:
        """Mark the runs of a pair recorded as running ``interrupted`` (call it holding the pair
        lock: then none of them is alive); returns their ids."""
        with self.tx("recording the run") as conn:
            rows = conn.execute(self.query("abandon_runs"),
                                {"source": source, "target": target}).fetchall()
        return [r[0] for r in rows]

    def finish_run(self, run_id: str, state: str, moved: int, left: int) -> None:
        with self.tx("recording the run") as conn:
            conn.execute(self.query("run_finish"), {"run_id": run_id, "state": state,
                                                    "moved": moved, "left": left})

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run's record (kind, source, target, state), or None."""
        with self.tx("reading the run") as conn:
            row = conn.execute(self.query("run_get"), {"run_id": run_id}).fetchone()
        if row is None:
            return None
        return {"run_id": run_id, "kind": row[0], "source": row[1], "target": row[2],
                "state": row[3]}

    def switch(self, run_id: str) -> str:
        with self.tx("reading the drain switch") as conn:
            row = conn.execute(self.query("run_switch"), {"run_id": run_id}).fetchone()
        return str(row[0]) if row else "run"

    def set_switch(self, source: str, target: str, value: str) -> list[str]:
        """Flip the switch of the running drain between source and target; returns its run id."""
        with self.tx("flipping the drain switch") as conn:
            rows = conn.execute(self.query("set_switch"), {"source": source, "target": target,
                                                           "switch": value}).fetchall()
        return [r[0] for r in rows]

    # -- verification tables -----------------------------------------------------------------
    def copy_snapshot(self, conn: psycopg.Connection[Any], side: str,
                      records: Iterable[JobRecord]) -> int:
        """COPY a backend's snapshot into the transaction's temporary table."""
        n = 0
        with conn.cursor().copy("COPY cutover_snap (side, id, queue, state, digest, attempts) "
                                "FROM STDIN") as copy:
            for r in records:
                try:
                    digest = r.digest() if not r.problem else f"problem:{r.id}"
                except UnsupportedValueError:
                    digest = f"unsupported:{r.id}"
                copy.write_row((side, r.id, r.queue, r.state.value, digest, r.attempts))
                n += 1
        return n

    def states(self, ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """Ledger rows of these jobs: id -> (state, source, target)."""
        with self.tx("reading the ledger") as conn:
            rows = conn.execute(self.query("ledger_states"), {"ids": "\n".join(ids)}).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


