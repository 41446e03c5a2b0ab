"""The control plane, in PostgreSQL, by table family:

- :mod:`~cutover.control.plane`: where it lives, connections, SQL blocks, schema migrations
  (:mod:`~cutover.control.migrations`), transaction-pooler detection, stores;
- :mod:`~cutover.control.ledger`: the ledger of jobs moved or accepted;
- :mod:`~cutover.control.runs`: drain runs, their switch and pair lock, failures;
- :mod:`~cutover.control.phase`: the phase, its epoch and pair, its history, shadow results,
  events; :mod:`~cutover.control.watcher`: PhaseWatcher;
- :mod:`~cutover.control.fleet`: producer and worker registrations;
- :mod:`~cutover.control.claims`: the fence.

:class:`ControlPlane` joins the families over one connection per thread.
"""

from __future__ import annotations

from cutover.control.claims import Claim, Claims, ClaimState
from cutover.control.fleet import Fleet, Member, MemberKind
from cutover.control.ledger import Ledger, LedgerEntry, LedgerState, UnfinishedMove
from cutover.control.phase import (
    CHANNEL,
    LogEntry,
    Pair,
    PhaseConflictError,
    Phases,
    PhaseState,
    ShadowRate,
)
from cutover.control.plane import PG_SCHEMES, backend_key, control_url
from cutover.control.runs import Failure, RunRecord, Runs
from cutover.control.watcher import PhaseWatcher


class ControlPlane(Ledger, Runs, Phases, Fleet, Claims):
    """The control schema in one PostgreSQL database: every table family's API."""


__all__ = [
    "CHANNEL", "PG_SCHEMES", "Claim", "ClaimState", "ControlPlane", "Failure", "LedgerEntry",
    "LedgerState", "LogEntry", "Member", "MemberKind", "Pair", "PhaseConflictError",
    "PhaseState", "PhaseWatcher", "RunRecord", "ShadowRate", "UnfinishedMove", "backend_key",
    "control_url",
]
