"""Verify: prove, job by job, that a drain lost, duplicated and altered nothing.

Both backends' snapshots are streamed (constant memory) into a temporary table of the control
plane's database with COPY; the comparison with the ledger is then SQL. First a cheap
order-independent fingerprint per queue (count and sum of digests) of what the ledger says was
moved against what the target holds; only queues whose fingerprints differ are compared id by
id. In-flight moves are reported as pending, never as lost. A moved job that neither backend
holds is lost unless the target's own records say it finished before it was deleted (its
retention at work): then it is reported as ``finished, since deleted``.

A pair the ledger has no history for is refused (exit 3): nothing was moved between those two
stores, so "nothing was lost" would be an empty promise (a typo'd database, a swapped pair).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from cutover import codec, stores
from cutover.backend import QueueBackend
from cutover.control import ControlPlane, backend_key
from cutover.dependencies import stranded
from cutover.errors import PreconditionError
from cutover.held import find_stuck, stuck_message, stuck_on
from cutover.record import JobState
from cutover.verify_report import VerifyReport

__all__ = ["VerifyReport", "verify"]

log = logging.getLogger("cutover.verify")

_WAITING = {JobState.QUEUED.value, JobState.SCHEDULED.value, JobState.HELD.value}


def verify(source: QueueBackend, source_url: str, target: QueueBackend, target_url: str,
           control: ControlPlane, batch_size: int = 5000) -> VerifyReport:
    """Reconcile the ledger's moves from source to target with both backends."""
    started = time.monotonic()
    # The ledger and the lock know the stores by identity; the report names them by URL.
    sid, tid = stores.distinct(source, target, "verify")
    skey, tkey = sid.key, tid.key
    report = VerifyReport(source=backend_key(source_url), target=backend_key(target_url))
    if not control.lock_pair(skey, tkey):
        raise PreconditionError("a drain between these two backends is running; verify once "
                                "it is done", source=report.source, target=report.target)
    try:
        control.meet(sid, source_url)
        control.meet(tid, target_url)
        try:
            _require_history(control, (skey, report.source), (tkey, report.target))
        except PreconditionError as exc:
            # Nothing moved, yet jobs may be held by a drain that died before moving any.
            stuck = stuck_on(control, {"s": (source, skey), "t": (target, tkey)})
            if stuck:
                raise PreconditionError(f"{exc.message}; and {stuck_message(stuck)}") from exc
            raise
        missing: list[tuple[str, str]] = []
        with control.tx("verifying") as conn:
            conn.execute(control.query("verify_tables"))
            report.read["s"] = control.copy_snapshot(conn, "s",
                                                     source.snapshot(batch_size=batch_size))
            report.read["t"] = control.copy_snapshot(conn, "t",
                                                     target.snapshot(batch_size=batch_size))
            conn.execute(control.query("verify_index"))
            pair = {"source": skey, "target": tkey}
            differing: list[str] = []
            for queue, ln, ls, tn, ts in conn.execute(control.query("verify_fingerprints"),
                                                      pair).fetchall():
                same = ln == tn and ls == ts
                report.queues[queue] = {"ledger": ln, "target": tn, "fingerprint_equal": same}
                report.verified += int(ln)
                if not same:
                    differing.append(queue)
            if differing:
                missing = _compare(conn, control, pair, differing, target, report)
            # Released jobs whose source copy is still there are duplicates, whatever the
            # fingerprints say (fingerprints cover the target side only).
            seen = {d["id"] for d in report.duplicated}
            for job_id, sstate, tstate in conn.execute(control.query("verify_both"),
                                                       pair).fetchall():
                if job_id not in seen:
                    report.duplicated.append({"id": job_id, "source_state": sstate,
                                              "target_state": tstate})
            for job_id, lstate, tstate, sstate in conn.execute(
                    control.query("verify_unsettled"), pair).fetchall():
                report.pending.append({"id": job_id, "ledger_state": lstate,
                                       "target_state": tstate, "source_state": sstate})
            # Held by no live drain: no worker of either side runs them (cutover release).
            held = [(str(r[0]), str(r[1])) for r in conn.execute(control.query("verify_held"))]
            report.stuck = find_stuck(control, {"s": (source, skey), "t": (target, tkey)}, held)
        # Deferred jobs whose parents are done (wherever they ran) that nothing will queue.
        report.stranded = stranded(source, skey, target) + stranded(target, tkey, source)
        _account_for_missing(missing, target, report, batch_size)
    finally:
        control.unlock_pair(skey, tkey)
    report.seconds = time.monotonic() - started
    return report


def _require_history(control: ControlPlane, source: tuple[str, str],
                     target: tuple[str, str]) -> None:
    """Refuse a pair the ledger never saw a job moved between (exit 3). ``source`` and
    ``target`` are (identity key, name for people)."""
    (skey, sname), (tkey, tname) = source, target
    moved, reverse = control.pair_history(skey, tkey)
    if moved:
        return
    hint = ("check that --source and --target name the stores the drain used (host, port, "
            "database number)")
    if reverse:
        hint = (f"the ledger has {reverse} job(s) moved the other way, from {tname} to {sname}: "
                "to verify that move, swap --source and --target")
    raise PreconditionError(f"nothing was moved between these two stores: the ledger has no "
                            f"job moved from {sname} to {tname}, so there is nothing to verify; "
                            f"{hint}")


def _compare(conn: Any, control: ControlPlane, pair: dict[str, str], queues: list[str],
             target: QueueBackend, report: VerifyReport) -> list[tuple[str, str]]:
    """Compare the queues whose fingerprints differ id by id. Returns the (id, queue) of moved
    jobs neither backend holds, for :func:`_account_for_missing`."""
    missing: list[tuple[str, str]] = []
    rows = conn.execute(control.query("verify_settled"), {**pair, "queues": queues}).fetchall()
    for job_id, queue, _ldigest, tstate, _tdigest, sstate, content, tattempts in rows:
        if sstate is not None:
            report.duplicated.append({"id": job_id, "source_state": sstate,
                                      "target_state": tstate})
            continue
        if tstate is None:
            missing.append((job_id, queue))
            continue
        # verify_settled returns a target copy only when its digest differs from the ledger's
        # (or the source holds the job too, handled above): no unchanged copy reaches here.
        expected = json.loads(content) if content else {}
        # A job that has run on the target since (it is no longer waiting, or has used
        # attempts) has a new digest: that is the target doing its work, not an alteration.
        if tstate not in _WAITING or tattempts > int(expected.get("attempts", 0)):
            report.ran_on_target += 1
            continue
        found = target.get(job_id)
        fields = {}
        if found is not None and expected:
            actual = json.loads(codec.canonical(found.content()))
            fields = {k: {"ledger": expected.get(k), "target": actual.get(k)} for k in actual
                      if actual.get(k) != expected.get(k)}
        report.mismatched.append({"id": job_id, "queue": queue, "fields": fields})
    return missing


def _account_for_missing(missing: list[tuple[str, str]], target: QueueBackend,
                         report: VerifyReport, batch_size: int) -> None:
    """A moved job neither backend holds: finished and since deleted when the target's own
    records say so, lost otherwise (no record, or a record of a deletion before it ended)."""
    # An adapter written before departures() existed keeps no such records: every missing job
    # is then lost, never assumed finished.
    lookup = getattr(target, "departures", None)
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        departures = lookup([job_id for job_id, _ in chunk]) if lookup is not None else {}
        for job_id, queue in chunk:
            gone = departures.get(job_id)
            if gone is not None and gone.finished:
                report.finished_deleted.append({
                    "id": job_id, "queue": queue, "status": gone.status,
                    "at": gone.at.isoformat() if gone.at else None, "evidence": gone.evidence})
            elif gone is not None:
                report.lost.append({
                    "id": job_id, "queue": queue,
                    "reason": f"deleted from the target while {gone.status}, before it "
                              f"finished ({gone.evidence})"})
            else:
                report.lost.append({
                    "id": job_id, "queue": queue,
                    "reason": "the ledger says it moved; neither backend has it, and the "
                              "target has no record that it finished"})
