"""The phase family: the current phase and epoch of the staged cut-over, the pair it belongs to,
the history of every transition, the shadow results and the audit trail. SQL in
``sql/phase.sql``; the rules (which moves, which checks) are :mod:`cutover.phases`."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import psycopg

from cutover import faults
from cutover.control.plane import Plumbing
from cutover.errors import ConfigurationError, PreconditionError
from cutover.phases import Decision, Phase

log = logging.getLogger("cutover.control")

#: The channel PhaseWatcher listens on; the payload is JSON {schema, phase, epoch}.
CHANNEL = "cutover_phase"


#: How long a transition waits for the phase row (held by an application transaction that
#: enqueued with connection=, or by another transition) before it is refused, seconds.
TRANSITION_LOCK_WAIT = 30.0


class PhaseConflictError(PreconditionError):
    """The phase changed while this transition was being decided."""


class PhaseBusyError(PreconditionError):
    """Another phase command is under way on this control plane."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """The source and target of a cut-over: store identity keys and redacted URLs."""

    source_key: str
    source_url: str
    target_key: str
    target_url: str


@dataclasses.dataclass(frozen=True)
class PhaseState:
    """The phase row: where the cut-over stands, its epoch, and the pair (None until the first
    transition fixed it)."""

    phase: Phase
    epoch: int
    pair: Pair | None = None
    changed_at: dt.datetime | None = None
    changed_by: str | None = None
    reason: str | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> PhaseState:
        pair = Pair(row[5], row[6], row[7], row[8]) if row[5] and row[7] else None
        return cls(phase=Phase(row[0]), epoch=int(row[1]), pair=pair, changed_at=row[2],
                   changed_by=row[3], reason=row[4], updated_at=row[9])

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase.value, "epoch": self.epoch,
                "source": self.pair.source_url if self.pair else None,
                "target": self.pair.target_url if self.pair else None,
                "changed_at": self.changed_at.isoformat() if self.changed_at else None,
                "changed_by": self.changed_by, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class LogEntry:
    """One recorded transition."""

    frm: Phase
    to: Phase
    epoch: int
    kind: str
    who: str
    host: str
    pid: int
    at: dt.datetime
    why: str | None
    forced: bool
    refusals: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc.update(frm=self.frm.value, to=self.to.value, at=self.at.isoformat())
        return doc


@dataclasses.dataclass(frozen=True)
class ShadowRate:
    """Dry runs recorded by the target's workers in shadow, and how many matched."""

    jobs: int
    matched: int

    @property
    def rate(self) -> float:
        return self.matched / self.jobs if self.jobs else 0.0


def operator() -> str:
    """Who is asking: the OS user (recorded with each transition)."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd entry)
        return f"uid:{os.getuid()}"


class Phases(Plumbing):
    """The phase row, its transitions, their history, shadow results and events."""

    def read_phase(self, conn: Any = None) -> PhaseState:
        """The current phase (``off`` at epoch 0 before any transition)."""
        with self.tx("reading the phase", conn) as c:
            row = c.execute(self.query("phase_read")).fetchone()
        return PhaseState(Phase.OFF, 0) if row is None else PhaseState.from_row(row)

    def phase(self) -> dict[str, Any]:
        """The phase as a JSON-able document (``status``)."""
        return self.read_phase().as_dict()

    def check_pair(self, state: PhaseState, pair: Pair | None) -> None:
        """Refuse (exit 2) a command naming another pair than the one the phase belongs to."""
        if pair is None or state.pair is None:
            return
        if (state.pair.source_key, state.pair.target_key) != (pair.source_key, pair.target_key):
            raise ConfigurationError(
                f"the cut-over at {self.redacted_url} is between {state.pair.source_url} and "
                f"{state.pair.target_url}, not {pair.source_url} -> {pair.target_url}: give "
                f"that pair's --source and --target")

    def transition(self, decision: Decision, who: str | None = None, why: str | None = None, *,
                   pair: Pair | None = None, kind: str | None = None,
                   expect_epoch: int | None = None) -> PhaseState:
        """Make the decided move: bump the epoch, record it in phase_log and events, and notify
        listeners, in one transaction holding the phase row's lock. A second operator moving at
        the same time waits for the lock, then is refused (PhaseConflictError, exit 3) with the
        phase the first one set. ``pair`` is fixed by the first transition."""
        move = decision.transition
        if not decision.allowed:
            raise PreconditionError(f"{move.name} refused: " + "; ".join(
                f"{check}: {detail}" for check, detail in decision.refusals))
        who = who or operator()
        kind = kind or ("rollback" if move.rollback else "advance")
        refusals = [{"check": str(c), "detail": d} for c, d in decision.refusals]
        with self.tx(f"changing the phase ({move.name})") as conn:
            conn.execute(self.query("phase_lock_timeout"),
                         {"ms": str(int(TRANSITION_LOCK_WAIT * 1000))})
            try:
                row = conn.execute(self.query("phase_lock")).fetchone()
            except psycopg.errors.LockNotAvailable as exc:
                raise PreconditionError(
                    f"{move.name} refused: the phase row stayed locked for "
                    f"{TRANSITION_LOCK_WAIT:g}s: application transactions that enqueued with "
                    f"connection= are still open (or another phase change is under way): the "
                    f"phase cannot change until they end. Nothing changed; run it again") from exc
            current = PhaseState(Phase.OFF, 0) if row is None else PhaseState.from_row(row)
            if current.phase is not move.frm or (expect_epoch is not None
                                                 and current.epoch != expect_epoch):
                raise PhaseConflictError(
                    f"{move.name} refused: the phase changed meanwhile: it is {current.phase} "
                    f"at epoch {current.epoch} (set by {current.changed_by or 'nobody'})")
            self.check_pair(current, pair)
            new = PhaseState.from_row(conn.execute(self.query("phase_write"), {
                "phase": move.to.value, "who": who, "why": why,
                "source_key": pair.source_key if pair else None,
                "source_url": pair.source_url if pair else None,
                "target_key": pair.target_key if pair else None,
                "target_url": pair.target_url if pair else None}).fetchone())
            conn.execute(self.query("phase_log_add"), {
                "frm": move.frm.value, "to": move.to.value, "epoch": new.epoch, "kind": kind,
                "who": who, "host": socket.gethostname(), "pid": os.getpid(), "why": why,
                "forced": decision.forced, "refusals": json.dumps(refusals)})
            self.event("phase", {"from": move.frm.value, "to": move.to.value,
                                 "epoch": new.epoch, "who": who, "why": why,
                                 "forced": decision.forced, "refusals": refusals}, conn=conn)
            conn.execute(self.query("phase_notify"), {"payload": json.dumps(
                {"schema": self.schema, "phase": new.phase.value, "epoch": new.epoch})})
            faults.point("phase_in_tx")  # written, not committed: a kill here changes nothing
        return new

    @contextlib.contextmanager
    def changing(self, command: str) -> Iterator[None]:
        """Hold the control plane's phase-change lock for one whole phase command (``command``:
        how it is named to a second one), from its read of the phase to the end of its move
        back: a second phase command meanwhile is refused (:class:`PhaseBusyError`, exit 3),
        naming the first, instead of reading the phase the first one set and stepping on from
        it (two bare ``rollback``s: rampdown -> live -> shadow). A session lock on a connection
        of its own: a killed command's lock ends with its session. Behind a transaction pooler
        (no session locks) only the transition's own epoch check guards (a warning says so)."""
        if self.pooled():
            log.warning("the control plane is behind a transaction pooler: a second phase "
                        "command run meanwhile is not refused (only one that read the phase "
                        "before this one's commit is)")
            yield
            return
        label = f"cutover {command} by {operator()}@{socket.gethostname()} pid {os.getpid()}"
        conn = self.connect("taking the phase-change lock")
        try:
            with self._errors("taking the phase-change lock"):
                conn.execute("SELECT set_config('application_name', %s, false)", [label[:63]])
                row = conn.execute(self.query("phase_change_lock"),
                                   {"schema": self.schema}).fetchone()
                holder = None if row and row[0] else conn.execute(
                    self.query("phase_change_holder"), {"schema": self.schema}).fetchone()
            if not (row and row[0]):
                who = (f"{holder[0] or 'a session'} (connected {holder[1]:%Y-%m-%d %H:%M:%S})"
                       if holder else "a command that has just ended")
                raise PhaseBusyError(
                    f"{command} refused: another phase command is under way on this control "
                    f"plane: {who}. Nothing changed. Once it has finished, see `cutover phase "
                    f"show` and run yours again if it is still needed, naming the phase (`cutover "
                    f"rollback --to PHASE`, `cutover phase advance --from PHASE`)")
            yield
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def hold_phase(self, conn: Any, epoch: int) -> None:
        """In the caller's own transaction (``conn``): share-lock the phase row until that
        transaction ends (no transition commits meanwhile: it waits), and check that the phase
        is still at ``epoch``, the one the call was routed by. PhaseConflictError otherwise
        (nothing written): route again."""
        with self._errors("holding the phase in your transaction"):
            row = conn.execute(self.query("phase_hold")).fetchone()
        now = 0 if row is None else int(row[0])
        if now != epoch:
            raise PhaseConflictError(f"the phase changed while routing this enqueue (epoch "
                                     f"{epoch} -> {now}): nothing was written; route again")

    def history(self, limit: int = 10) -> list[LogEntry]:
        """The latest transitions, newest first."""
        with self.tx("reading the phase history") as conn:
            rows = conn.execute(self.query("phase_log_tail"), {"limit": limit}).fetchall()
        return [LogEntry(Phase(r[0]), Phase(r[1]), int(r[2]), r[3], r[4], r[5], int(r[6]),
                         r[7], r[8], bool(r[9]), list(r[10])) for r in rows]

    def event(self, kind: str, detail: dict[str, Any], conn: Any = None) -> None:
        """Add to the audit trail (in the caller's transaction when given)."""
        with self.tx("recording an event", conn) as c:
            c.execute(self.query("event_add"), {"kind": kind,
                                                "detail": json.dumps(detail, default=str)})

    def events(self, limit: int = 20) -> list[tuple[int, dt.datetime, str, Any]]:
        """The latest events, newest first: (id, at, kind, detail)."""
        with self.tx("reading events") as conn:
            rows = conn.execute(self.query("events_tail"), {"limit": limit}).fetchall()
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]

    # -- shadow results ------------------------------------------------------------------------
    def record_shadow(self, cutover_id: str, matched: bool, detail: str = "") -> None:
        """A target worker's dry run of one job in shadow: did it match the source copy?"""
        with self.tx("recording a shadow result") as conn:
            conn.execute(self.query("shadow_record"), {"id": cutover_id, "matched": matched,
                                                       "detail": detail or None})

    def shadow_rate(self) -> ShadowRate:
        with self.tx("reading shadow results") as conn:
            row = conn.execute(self.query("shadow_rate")).fetchone()
        return ShadowRate(int(row[0]), int(row[1])) if row else ShadowRate(0, 0)

    def shadow_mismatches(self, limit: int = 10) -> list[tuple[str, str | None]]:
        with self.tx("reading shadow results") as conn:
            rows = conn.execute(self.query("shadow_mismatches"), {"limit": limit}).fetchall()
        return [(r[0], r[1]) for r in rows]


__all__ = ["CHANNEL", "LogEntry", "Pair", "PhaseBusyError", "PhaseConflictError", "PhaseState",
           "Phases", "ShadowRate", "operator"]
