"""The ledger family: one row per job the toolkit moved or accepted, where it lives now and what
it contains. SQL in ``sql/ledger.sql``."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from cutover.control.plane import Plumbing
from cutover.errors import UnsupportedValueError
from cutover.record import JobRecord, JobState

#: Final states: a copy in one of them has ended (run, or marked by hand).
_FINAL = frozenset({JobState.FINISHED.value, JobState.FAILED.value, JobState.CANCELED.value})
#: Waiting states: a copy in one of them, never attempted, has not run.
_UNRUN = frozenset({JobState.QUEUED.value, JobState.SCHEDULED.value, JobState.DEFERRED.value,
                    JobState.HELD.value})


class LedgerState(enum.StrEnum):
    """Where a job of the ledger stands."""

    MOVING = "moving"      # a drain took it and is putting it on the target
    MOVED = "moved"        # on the target; the source copy not yet released
    RELEASED = "released"  # the move is finished: the source copy is gone
    ACCEPTED = "accepted"  # enqueued through the toolkit (the Router's dual write: both sides)


class LedgerEntry(NamedTuple):
    """A job's ledger row: its state and the pair (store keys) it belongs to."""

    state: LedgerState
    source: str
    target: str


class UnfinishedMove(NamedTuple):
    """A move a drain left under way."""

    id: str
    state: LedgerState
    digest: str


class Ledger(Plumbing):
    """Ledger rows: written in batches by COPY, marked by id, read for verification."""

    def record(self, records: Sequence[JobRecord], *, state: LedgerState | str, source: str,
               target: str, run_id: str, conn: Any = None) -> None:
        """Write (or move) the ledger rows of ``records``.

        One row is one statement (:meth:`record_statement`: the Router's single enqueue); more
        go by COPY."""
        if not records:
            return
        value = LedgerState(state).value
        if len(records) == 1:
            statement, params = self.record_statement(records[0], state=value, source=source,
                                                      target=target, run_id=run_id)
            with self.tx("writing the ledger", conn) as c:
                c.execute(statement, params)
            return
        rows = [(r.id, r.task, r.queue, r.digest(), r.content_json(), value, source, target,
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

    def record_statement(self, record: JobRecord, *, state: LedgerState | str, source: str,
                         target: str, run_id: str) -> tuple[sql.Composed, dict[str, Any]]:
        """:meth:`record` of one job as a statement and its parameters (named ``ledger_*``),
        for a backend to run in the very statement that writes the job
        (:class:`~cutover.backend.StatementEnqueue`)."""
        return self.query("ledger_upsert_with"), {
            "ledger_id": record.id, "ledger_task": record.task, "ledger_queue": record.queue,
            "ledger_digest": record.digest(), "ledger_content": record.content_json(),
            "ledger_state": LedgerState(state).value, "ledger_source": source,
            "ledger_target": target, "ledger_source_id": record.native_id,
            "ledger_origin": record.origin, "ledger_run_id": run_id}

    def mark(self, ids: Sequence[str], *, state: LedgerState | str, source: str, target: str,
             conn: Any = None) -> None:
        if not ids:
            return
        with self.tx("updating the ledger", conn) as c:
            c.execute(self.query("ledger_mark"), {"ids": "\n".join(ids),
                                                  "state": LedgerState(state).value,
                                                  "source": source, "target": target})

    def forget(self, ids: Sequence[str], *, source: str, target: str) -> None:
        """Delete intent rows (``moving``) of jobs that did not move after all: the target
        refused them and they went back to the source."""
        if not ids:
            return
        with self.tx("updating the ledger") as c:
            c.execute(self.query("ledger_forget"), {"ids": list(ids), "source": source,
                                                    "target": target})

    def discard(self, ids: Sequence[str], *, source: str, target: str, conn: Any = None) -> None:
        """Delete ``accepted`` rows of jobs the Router took back (see ``ledger_discard``)."""
        if not ids:
            return
        with self.tx("updating the ledger", conn) as c:
            c.execute(self.query("ledger_discard"), {"ids": list(ids), "source": source,
                                                     "target": target})

    def unfinished(self, source: str, target: str) -> list[UnfinishedMove]:
        """Ledger rows of moves from source to target that did not finish."""
        with self.tx("reading the ledger") as conn:
            rows = conn.execute(self.query("ledger_unfinished"),
                                {"source": source, "target": target}).fetchall()
        return [UnfinishedMove(r[0], LedgerState(r[1]), r[2]) for r in rows]

    def pair_history(self, source: str, target: str) -> tuple[bool, int]:
        """Whether any job was moved from source to target; how many went the other way."""
        with self.tx("reading the ledger") as conn:
            row = conn.execute(self.query("ledger_pair_history"),
                               {"source": source, "target": target}).fetchone()
        return (bool(row[0]), int(row[1])) if row else (False, 0)

    def summary(self) -> list[dict[str, Any]]:
        """Jobs per pair (redacted URLs) and state, for ``status``."""
        with self.tx("reading the ledger") as conn:
            rows = conn.execute(self.query("ledger_summary")).fetchall()
        return [{"source": r[0], "target": r[1], "state": r[2], "jobs": r[3]} for r in rows]

    def states(self, ids: Sequence[str]) -> dict[str, LedgerEntry]:
        """Ledger rows of these jobs, by id."""
        with self.tx("reading the ledger") as conn:
            rows = conn.execute(self.query("ledger_states"), {"ids": "\n".join(ids)}).fetchall()
        return {r[0]: LedgerEntry(LedgerState(r[1]), r[2], r[3]) for r in rows}

    def content_of(self, cutover_id: str) -> tuple[str, dict[str, Any]] | None:
        """(digest, content) of a job as its ledger row recorded it, or None."""
        with self.tx("reading the ledger") as conn:
            row = conn.execute(self.query("ledger_content"), {"id": cutover_id}).fetchone()
        if row is None:
            return None
        content = row[1] if isinstance(row[1], dict) else json.loads(row[1]) if row[1] else {}
        return str(row[0]), content

    # -- verification tables -----------------------------------------------------------------
    def copy_snapshot(self, conn: psycopg.Connection[Any], side: str,
                      records: Iterable[JobRecord], *, stamps_runs: bool = False) -> int:
        """COPY a backend's snapshot into the transaction's temporary table (``verify_tables``).

        Each copy keeps its content (compared with the ledger's where the digests differ;
        left out for a waiting copy never attempted, which its digest alone judges) and
        ``ended``: whether a final copy carries a trace only a run leaves: a failed run's
        error, or the end a backend stamps on a run (``stamps_runs``: RQ, whose own worker
        counts no attempt but writes ``started_at``/``ended_at``). A status set by hand leaves
        neither."""
        n = 0
        with conn.cursor().copy("COPY cutover_snap (side, id, queue, state, digest, attempts, "
                                "content, ended) FROM STDIN") as copy:
            for r in records:
                content: str | None = None
                try:
                    digest = r.digest() if not r.problem else f"problem:{r.id}"
                    # A waiting copy never attempted is compared by digest alone (any difference
                    # is an alteration): its content is not needed, and most of a backlog is
                    # such copies.
                    if not r.problem and (r.attempts or r.state.value not in _UNRUN):
                        content = r.content_json()
                except UnsupportedValueError:
                    digest = f"unsupported:{r.id}"
                ended = r.state.value in _FINAL and (
                    bool(r.error) or (stamps_runs and r.updated_at is not None))
                copy.write_row((side, r.id, r.queue, r.state.value, digest, r.attempts,
                                content, ended))
                n += 1
        return n

    def record_removal(self, cutover_id: str, side: str, why: str) -> None:
        """A fenced worker is about to remove ``side``'s copy of a job without running it
        (``why``: ``duplicate`` or ``dry_run``). Written before the removal: verify reads a
        copy gone with this record as accounted for, and a copy gone without any record as
        vanished (see ``verify_judge``)."""
        with self.tx("recording a removal") as conn:
            conn.execute(self.query("removal_record"), {"id": cutover_id, "side": side,
                                                        "why": why})
