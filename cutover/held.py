"""Held jobs: who holds them, whether that drain is alive, which are stuck, giving them back.

A drain takes the jobs it moves out of reach of every worker and holds them for an owner named
after its target, ``cutover-drain:<target key>``. A drain that is killed leaves them held; the
next drain of the same pair adopts and moves them. Held with no drain running, they are *stuck*:
no worker of either side runs them. ``cutover verify`` reports them (exit 3) and
``cutover release`` gives them back to their source lists on an operator's word.

A drain is alive while it keeps its pair lock (a PostgreSQL session lock, gone with the
connection of a killed drain); that is what "alive" means here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from cutover.backend import QueueBackend
from cutover.control import ControlPlane
from cutover.errors import ConfigurationError, PreconditionError
from cutover.record import JobRecord, JobState

log = logging.getLogger("cutover.held")

OWNER_PREFIX = "cutover-drain:"


def drain_owner(target_key: str) -> str:
    """The owner a drain toward ``target_key`` holds its jobs for."""
    return OWNER_PREFIX + target_key


def drain_target(owner: str) -> str | None:
    """The target key of a drain owner (None for an owner that is not a drain)."""
    return owner[len(OWNER_PREFIX):] if owner.startswith(OWNER_PREFIX) else None


def drain_alive(control: ControlPlane, source_key: str, owner: str) -> bool:
    """Whether the drain that holds jobs for ``owner`` on ``source_key`` is running (it keeps
    the pair lock). A caller that holds that pair lock itself gets False: the lock is
    re-entrant within a session, and while it holds it no drain of that pair can run."""
    target = drain_target(owner)
    if target is None:
        return False
    if control.lock_pair(source_key, target):
        control.unlock_pair(source_key, target)
        return False
    return True


def held_jobs(backend: QueueBackend, queues: Sequence[str] | None = None,
              batch_size: int = 1000) -> Iterator[JobRecord]:
    """Every job the backend holds (for any owner)."""
    for batch in backend.batches(states=[JobState.HELD], queues=queues, batch_size=batch_size):
        yield from (r for r in batch if r.state is JobState.HELD)


def find_stuck(control: ControlPlane, sides: dict[str, tuple[QueueBackend, str]],
               held_ids: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Of ``held_ids`` ((side, id) pairs, side a key of ``sides``: backend and its key), the
    jobs held by no live drain: stuck, since no worker of either side will run them."""
    stuck: list[dict[str, Any]] = []
    alive: dict[tuple[str, str], bool] = {}
    for side, job_id in held_ids:
        backend, key = sides[side]
        record = backend.get(job_id)
        if record is None or record.state is not JobState.HELD:
            continue  # given back or moved since the snapshot
        holder = record.holder or ""
        if (key, holder) not in alive:
            alive[key, holder] = drain_alive(control, key, holder)
        if not alive[key, holder]:
            stuck.append({"id": job_id, "backend": key, "holder": holder, "queue": record.queue,
                          "task": record.task})
    return stuck


def stuck_on(control: ControlPlane,
             sides: dict[str, tuple[QueueBackend, str]]) -> list[dict[str, Any]]:
    """The stuck jobs of these backends, read from the backends themselves (for a caller
    without a snapshot at hand)."""
    held = [(side, r.id) for side, (backend, _) in sides.items() for r in held_jobs(backend)]
    return find_stuck(control, sides, held)


def stuck_message(stuck: Sequence[dict[str, Any]]) -> str:
    ids = ", ".join(repr(j["id"]) for j in stuck[:20]) + (" ..." if len(stuck) > 20 else "")
    return (f"{len(stuck)} job(s) held by no running drain (stuck: no worker of either side "
            f"runs them): {ids}; re-run that drain, or `cutover release --all-stale`")


@dataclasses.dataclass
class ReleaseReport:
    """What ``cutover release`` gave back, and what it left held (with the reason)."""

    released: list[dict[str, str]] = dataclasses.field(default_factory=list)
    kept: list[dict[str, str]] = dataclasses.field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"released": self.released, "kept": self.kept, "dry_run": self.dry_run}


def release(source: QueueBackend, source_key: str, control: ControlPlane, *,
            run_id: str | None = None, target: QueueBackend | None = None,
            target_key: str | None = None, dry_run: bool = False,
            batch_size: int = 1000) -> ReleaseReport:
    """Give the jobs held on ``source`` back to where they were taken from: those of drain run
    ``run_id``'s pair, or (``run_id`` None) every job held by no live drain.

    Refused (exit 3) while the drain of ``run_id``'s pair runs; with every stale job, those of
    a live drain are left alone. The pair lock is kept meanwhile, so no drain of that pair starts
    halfway. A job the ledger says is on the target (``moved``), or was being put there
    (``moving``) while ``target`` is not given or has it, is kept: giving it back could run it
    twice; the drain of that pair finishes it."""
    report = ReleaseReport(dry_run=dry_run)
    wanted: str | None = None
    if run_id is not None:
        run = control.run(run_id)
        if run is None:
            raise ConfigurationError(f"no drain run {run_id!r} in the control plane")
        if run["source"] != source_key:
            raise ConfigurationError(f"run {run_id} drained from "
                                     f"{control.describe(run['source'])}, not from "
                                     f"{source.url}: pass that --source")
        wanted = drain_owner(run["target"])
    by_owner: dict[str, list[JobRecord]] = {}
    for record in held_jobs(source, batch_size=batch_size):
        owner = record.holder or ""
        if wanted is None or owner == wanted:
            by_owner.setdefault(owner, []).append(record)
    if wanted is not None and wanted not in by_owner:
        by_owner[wanted] = []
    for owner, records in by_owner.items():
        pair = drain_target(owner)
        if pair is not None and not control.lock_pair(source_key, pair):
            if run_id is not None:
                raise PreconditionError(f"the drain of run {run_id} (or another drain from "
                                        f"{source.url} to {control.describe(pair)}) is "
                                        "running: stop it first "
                                        "(cutover drain --signal stop)", held=len(records))
            report.kept += [_line(r, "held by a drain that is running") for r in records]
            continue
        try:
            _release_owner(source, source_key, control, owner, records, target, target_key,
                           dry_run, report)
        finally:
            if pair is not None:
                control.unlock_pair(source_key, pair)
    return report


def _release_owner(source: QueueBackend, source_key: str, control: ControlPlane, owner: str,
                   records: list[JobRecord], target: QueueBackend | None,
                   target_key: str | None, dry_run: bool, report: ReleaseReport) -> None:
    pair = drain_target(owner)
    rows = control.states([r.id for r in records]) if records else {}
    free: list[JobRecord] = []
    intents: list[str] = []
    for record in records:
        row = rows.get(record.id)
        if row is None or row[0] not in ("moving", "moved") or row[1] != source_key:
            free.append(record)
            continue
        where = control.describe(row[2])
        if row[0] == "moved":
            report.kept.append(_line(record, f"the ledger says it is on {where} already: "
                                             "re-run that drain to finish the move"))
        elif target is None or target_key != row[2]:
            report.kept.append(_line(record, f"the ledger says it was being put on {where}: "
                                             "pass that --target to check it is not there, or "
                                             "re-run that drain"))
        elif target.get(record.id) is not None:
            report.kept.append(_line(record, f"it is on {where} already: re-run that drain "
                                             "to finish the move"))
        else:
            free.append(record)
            intents.append(record.id)
    report.released += [_line(r, f"held by {owner}") for r in free]
    if dry_run or not free:
        return
    given = source.give_back([r.id for r in free], owner)
    if intents and pair is not None:
        control.forget(intents, source=source_key, target=pair)
    log.warning("gave back %d job(s) held by %s on %s", given, owner, source.url)


def _line(record: JobRecord, reason: str) -> dict[str, str]:
    return {"id": record.id, "task": record.task, "queue": record.queue,
            "holder": record.holder or "", "reason": reason}
