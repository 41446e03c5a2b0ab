"""Verify: prove, job by job, that no job the toolkit accepted or moved was lost, run twice or
altered.

Every ledger row of the pair is judged, in either direction: jobs a drain moved (``released``)
and jobs the Router accepted during a staged cut-over (``accepted``). Both backends' snapshots
are streamed (constant memory) into a temporary table of the control plane's database with
COPY; one SQL pass (``verify_judge``) then sets each job against its ledger row, the fence's
claims (the one place verify reads them) and the fence's removals (migration 0003). For each
job verify concludes one of:

- ran exactly once: execution evidence on one side only, a finished claim there, or a copy
  in a final state whose backend counted an attempt or stamped an end (RQ), or, for a copy
  that is gone, the backend's own departure record that it ended (its retention at work);
- failed for good (the same, in a failed state: visible with its error);
- waiting where a worker will run it in the current phase (:func:`cutover.phases.mode`);
- or it failed verification (exit 1): ``lost`` (no run, and no copy a worker will run),
  ``duplicated`` (ran twice, or a moved job back on the side it left), ``mismatched`` (a
  content field a run does not change differs on some copy, or a copy that has not run
  differs at all), ``unaccounted`` (a copy left a backend with no record of how: no claim on
  that side, no departure record, not moved per the ledger, not removed by the fence).

A copy in a final state with no evidence that it ran (marked succeeded or cancelled by hand) is
not a run. In-flight moves are reported as pending, never as lost.

A pair the ledger has no history for is refused (exit 3): nothing was moved between those two
stores, so "nothing was lost" would be an empty promise (a typo'd database, a swapped pair).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

from cutover import codec, stores
from cutover.backend import Departure, QueueBackend
from cutover.control import ControlPlane, PhaseState, backend_key
from cutover.dependencies import stranded
from cutover.errors import PreconditionError
from cutover.held import find_stuck, stuck_message, stuck_on
from cutover.phases import Mode, Phase, Side, mode
from cutover.record import JobState
from cutover.verify_report import VerifyReport

__all__ = ["VerifyReport", "verify"]

log = logging.getLogger("cutover.verify")

_WAITING = {JobState.QUEUED.value, JobState.SCHEDULED.value, JobState.DEFERRED.value,
            JobState.HELD.value}
#: The content fields no run changes: compared on every copy, run or not.
CORE_FIELDS = ("task", "args", "kwargs", "queue", "job_key")
#: Departure statuses that end a job without running it.
_NOT_RUN = {"cancelled", "canceled"}
_NAMES = {"s": "source", "t": "target"}
#: Seconds before the snapshots from which a ledger row counts as recent (see verify_judge).
RECENT = 5.0


def verify(source: QueueBackend, source_url: str, target: QueueBackend, target_url: str,
           control: ControlPlane, batch_size: int = 5000) -> VerifyReport:
    """Reconcile every ledger row of the pair with both backends (see the module's doc)."""
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
        state = control.read_phase()
        try:
            _require_history(control, (skey, report.source), (tkey, report.target),
                             staged=state.pair is not None
                             and {state.pair.source_key, state.pair.target_key} == {skey, tkey})
        except PreconditionError as exc:
            # Nothing moved, yet jobs may be held by a drain that died before moving any.
            stuck = stuck_on(control, {"s": (source, skey), "t": (target, tkey)})
            if stuck:
                raise PreconditionError(f"{exc.message}; and {stuck_message(stuck)}") from exc
            raise
        where = _who_runs(state, skey, tkey)
        report.phase = state.phase.value
        backends = {"s": source, "t": target}
        with control.tx("verifying") as conn:
            conn.execute(control.query("verify_tables"))
            # Rows written from RECENT seconds before the snapshots on may have copies the
            # snapshots missed (a writer's now() is its transaction's start): looked at again.
            clock = conn.execute(control.query("verify_clock")).fetchone()
            since = clock[0] - dt.timedelta(seconds=RECENT) if clock else None
            report.read["s"] = control.copy_snapshot(conn, "s",
                                                     source.snapshot(batch_size=batch_size),
                                                     stamps_runs=_stamps_runs(source))
            report.read["t"] = control.copy_snapshot(conn, "t",
                                                     target.snapshot(batch_size=batch_size),
                                                     stamps_runs=_stamps_runs(target))
            conn.execute(control.query("verify_index"))
            pair = {"source": skey, "target": tkey}
            conn.execute(control.query("verify_judge"), {**pair, **where, "since": since})
            fingerprints: dict[str, list[int]] = {}
            for queue, verdict, n, ran_t, ln, ls, tn, ts in conn.execute(
                    control.query("verify_verdicts")).fetchall():
                report.verified += int(n)
                report.ran_on_target += int(ran_t)
                if verdict != "check":
                    report.jobs[verdict] = report.jobs.get(verdict, 0) + int(n)
                sums = fingerprints.setdefault(queue, [0, 0, 0, 0])
                for i, value in enumerate((ln, ls, tn, ts)):
                    sums[i] += int(value)
            # Per queue, the released jobs' fingerprint against the target's copies: a summary
            # for people (the judgement covers every row whatever it says).
            for queue, (ln, ls, tn, ts) in sorted(fingerprints.items()):
                if ln or tn:
                    report.queues[queue] = {"ledger": ln, "target": tn,
                                            "fingerprint_equal": ln == tn and ls == ts}
            with conn.cursor(name="cutover_verify_checks") as cur:
                cur.execute(control.query("verify_checks"))
                while rows := cur.fetchmany(batch_size):
                    _conclude([dict(zip(_CHECK_COLUMNS, r, strict=True)) for r in rows],
                              backends, report, state.phase,
                              {"s": bool(where["idle_s"]), "t": bool(where["idle_t"])})
            seen = {d["id"] for d in report.duplicated}
            for job_id, sstate, tstate in conn.execute(control.query("verify_both"),
                                                       pair).fetchall():
                if job_id not in seen:
                    report.duplicated.append({
                        "id": job_id, "source_state": sstate, "target_state": tstate,
                        "reason": "in both backends, and the ledger has no row for it"})
            for job_id, lstate, tstate, sstate in conn.execute(
                    control.query("verify_unsettled"), pair).fetchall():
                report.pending.append({"id": job_id, "ledger_state": lstate,
                                       "target_state": tstate, "source_state": sstate})
            # Held by no live drain: no worker of either side runs them (cutover release).
            held = [(str(r[0]), str(r[1])) for r in conn.execute(control.query("verify_held"))]
            report.stuck = find_stuck(control, {"s": (source, skey), "t": (target, tkey)}, held)
        # Deferred jobs whose parents are done (wherever they ran) that nothing will queue.
        report.stranded = stranded(source, skey, target) + stranded(target, tkey, source)
    finally:
        control.unlock_pair(skey, tkey)
    report.seconds = time.monotonic() - started
    return report


def _stamps_runs(backend: QueueBackend) -> bool:
    """Whether a final copy's end time is evidence that it ran: RQ's own worker counts no
    attempt but writes ``started_at``/``ended_at``; a status set by hand writes neither. (On
    PostgreSQL a run counts an attempt, and the adapter's update time moves for other reasons.)
    """
    return backend.name == "rq"


def _who_runs(state: PhaseState, skey: str, tkey: str) -> dict[str, Any]:
    """The judgement's phase parameters: the claims' name for the --source side (``cs``),
    whether a worker runs a waiting copy on each side now (``ok_s``, ``ok_t``), and whether no
    worker takes anything there at all (``idle_s``, ``idle_t``: not even a dry run)."""
    reverse = state.pair is not None and state.pair.source_key == tkey
    s_side, t_side = (Side.TARGET, Side.SOURCE) if reverse else (Side.SOURCE, Side.TARGET)
    if state.phase is Phase.OFF and state.epoch == 0:
        # no staged cut-over ever started: every worker runs what it holds
        return {"cs": s_side.value, "ok_s": True, "ok_t": True, "idle_s": False,
                "idle_t": False}
    s_mode, t_mode = mode(state.phase, s_side), mode(state.phase, t_side)
    return {"cs": s_side.value, "ok_s": s_mode in (Mode.EXECUTE, Mode.FENCED),
            "ok_t": t_mode in (Mode.EXECUTE, Mode.FENCED), "idle_s": s_mode is Mode.IDLE,
            "idle_t": t_mode is Mode.IDLE}


def _require_history(control: ControlPlane, source: tuple[str, str],
                     target: tuple[str, str], *, staged: bool = False) -> None:
    """Refuse a pair the ledger never saw a job moved between (exit 3). ``source`` and
    ``target`` are (identity key, name for people). ``staged``: the pair is the staged
    cut-over's, whose rows go both ways (a rollback's move back): either direction will do."""
    (skey, sname), (tkey, tname) = source, target
    moved, reverse = control.pair_history(skey, tkey)
    if moved or (staged and reverse):
        return
    hint = ("check that --source and --target name the stores the drain used (host, port, "
            "database number)")
    if reverse:
        hint = (f"the ledger has {reverse} job(s) moved the other way, from {tname} to {sname}: "
                "to verify that move, swap --source and --target")
    raise PreconditionError(f"nothing was moved between these two stores: the ledger has no "
                            f"job moved from {sname} to {tname}, so there is nothing to verify; "
                            f"{hint}")


_CHECK_COLUMNS = ("id", "queue", "lstate", "forward", "s_state", "t_state", "s_run", "t_run",
                  "s_alive", "t_alive", "s_ask", "t_ask", "stray", "altered", "runs", "waits",
                  "claim_s", "claim_t", "finished", "how", "s_ended", "t_ended",
                  "claim_failed", "recent", "content")


#: Copy states that wait for a worker (held and started copies are a drain's or a worker's).
_WAITING_AGAIN = frozenset({JobState.QUEUED.value, JobState.SCHEDULED.value,
                            JobState.DEFERRED.value})


def _conclude(rows: list[dict[str, Any]], backends: dict[str, QueueBackend],
              report: VerifyReport, phase: Phase, idle: dict[str, bool] | None = None) -> None:
    """Conclude the rows ``verify_judge`` left to check: ask each backend's departure records
    about the copies gone without a reason in the control plane (one lookup per side and
    batch), then file each job (see the module's doc)."""
    departed: dict[str, dict[str, Departure]] = {}
    for side, backend in backends.items():
        # A copy of a recent row that the snapshot missed but the backend holds now was written
        # while the snapshots were read: that job is judged by the next verify.
        for row in rows:
            if row["recent"] and row[f"{side}_ask"] and backend.get(row["id"]) is not None:
                row["late"] = True
        ids = [r["id"] for r in rows if r[f"{side}_ask"]]
        # An adapter written before departures() existed keeps no such records: every copy
        # gone from it is then unaccounted for, never assumed finished.
        lookup = getattr(backend, "departures", None)
        departed[side] = lookup(ids) if ids and lookup is not None else {}
    for row in rows:
        if row.get("late"):
            report.jobs["recent"] = report.jobs.get("recent", 0) + 1
            continue
        _conclude_one(row, departed, backends, report, phase,
                      idle or {"s": False, "t": False})


def _conclude_one(row: dict[str, Any], departed: dict[str, dict[str, Departure]],
                  backends: dict[str, QueueBackend], report: VerifyReport,
                  phase: Phase, idle: dict[str, bool]) -> None:
    job_id, queue = row["id"], row["queue"]
    states = {"s": row["s_state"], "t": row["t_state"]}
    runs = int(row["runs"])
    evidence = [_run_evidence(row, side) for side in "st" if row[f"{side}_run"]]
    gone: list[str] = []  # copies that left a backend other than by a run, move or removal
    notes: list[str] = []  # why nothing runs the job
    failed = bool(row["claim_failed"]) or any(
        row[f"{side}_run"] and states[side] == JobState.FAILED.value for side in "st")
    # A copy waiting again on a side where the job already ran, in a phase where no worker
    # takes anything there (the source after complete, the target in off after a rollback):
    # the job was enqueued there again (an `rq requeue`, a backend's retry) and that enqueue
    # will never run. Its twin waiting on the side that did not run it is the run's own copy.
    stranded = [f"a copy waits again on the {_NAMES[side]} (the job ran there before), where "
                f"no worker takes jobs in {phase}: that enqueue never runs"
                for side in "st"
                if idle[side] and row[f"{side}_run"] and states[side] in _WAITING_AGAIN]
    for side in "st":
        name = _NAMES[side]
        if row[f"{side}_ask"]:
            found = departed[side].get(job_id)
            if found is not None and found.finished and found.status not in _NOT_RUN:
                runs += 1
                failed = failed or found.status == "failed"
                evidence.append(f"the {name}'s record that it {found.status} "
                                f"({found.evidence})")
                report.finished_deleted.append({
                    "id": job_id, "queue": queue, "side": name, "status": found.status,
                    "at": found.at.isoformat() if found.at else None,
                    "evidence": found.evidence})
            elif found is not None and found.finished:
                gone.append(f"{found.status} on the {name} before it ran ({found.evidence})")
            elif found is not None:
                gone.append(f"deleted from the {name} while {found.status}, before it "
                            f"finished ({found.evidence})")
            else:
                gone.append(f"gone from the {name}, which has no record that it finished (no "
                            f"finished claim on the {name}, no departure record, not moved "
                            "per the ledger, not removed by the fence)")
        elif (states[side] in (JobState.FINISHED.value, JobState.FAILED.value,
                               JobState.CANCELED.value) and not row[f"{side}_run"]):
            notes.append(f"{states[side]} on the {name} with no evidence it ran (no finished "
                         "claim, no attempt counted, no end recorded): marked by hand?")
        elif row[f"{side}_alive"] and not row["waits"]:
            notes.append(f"waits on the {name}, where no worker runs jobs in {phase}")
    if row["altered"]:
        report.mismatched.append({"id": job_id, "queue": queue,
                                  "fields": _altered_fields(row, backends)})
    if row["stray"]:
        back = "s" if row["forward"] else "t"
        report.duplicated.append({
            "id": job_id, "source_state": states["s"], "target_state": states["t"],
            "reason": f"moved away from the {_NAMES[back]}, and a copy is there again"})
    if stranded:
        report.lost.append({"id": job_id, "queue": queue, "reason": "; ".join(stranded)})
    elif runs > 1:
        if int(row["finished"]) > 1:
            evidence.append(f"{row['finished']} finished claims")
        report.duplicated.append({
            "id": job_id, "source_state": states["s"], "target_state": states["t"],
            "reason": "ran twice: " + "; ".join(evidence)})
    elif runs == 1 or row["waits"]:
        if gone:
            report.unaccounted.append({"id": job_id, "queue": queue, "reason": "; ".join(gone)})
        elif not (row["altered"] or row["stray"]):
            verdict = ("failed" if failed else "ran") if runs else "waiting"
            report.jobs[verdict] = report.jobs.get(verdict, 0) + 1
    else:
        reasons = gone + notes
        if not reasons:
            reasons = ["no copy on either side, and no record that it ran"]
        report.lost.append({"id": job_id, "queue": queue, "reason": "; ".join(reasons)})


def _run_evidence(row: dict[str, Any], side: str) -> str:
    name = _NAMES[side]
    if row[f"claim_{side}"]:
        return f"a finished claim on the {name}"
    if row[f"{side}_ended"]:
        return f"the {name}'s copy {row[f'{side}_state']}, with an end time"
    return f"the {name}'s copy {row[f'{side}_state']}, with an attempt counted"


def _altered_fields(row: dict[str, Any], backends: dict[str, QueueBackend]
                    ) -> dict[str, dict[str, Any]]:
    """The fields that differ between the ledger's content and the copies (read again: only
    altered jobs get here): the core fields on every copy, every field on a copy that has not
    run. Keyed by field, each with the ledger's value and each differing copy's."""
    expected = json.loads(row["content"]) if row["content"] else {}
    fields: dict[str, dict[str, Any]] = {}
    left = "s" if row["forward"] else "t"  # the side a released job left
    for side in "st":
        if row[f"{side}_state"] is None or (row["lstate"] == "released" and side == left):
            continue
        found = backends[side].get(row["id"])
        if found is None or found.problem:
            continue
        actual = json.loads(codec.canonical(found.content()))
        unrun = (found.state.value in _WAITING
                 and found.attempts <= int(expected.get("attempts", 0)))
        for key in sorted(set(actual) | set(expected)):
            if (unrun or key in CORE_FIELDS) and actual.get(key) != expected.get(key):
                fields.setdefault(key, {"ledger": expected.get(key)})[_NAMES[side]] = \
                    actual.get(key)
    return fields

