"""Verify: prove, job by job, that a drain lost, duplicated and altered nothing.

Both backends' snapshots are streamed (constant memory) into a temporary table of the control
plane's database with COPY; the comparison with the ledger is then SQL. First a cheap
order-independent fingerprint per queue (count and sum of digests) of what the ledger says was
moved against what the target holds; only queues whose fingerprints differ are compared id by
id. In-flight moves are reported as pending, never as lost.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from cutover import codec
from cutover.backend import QueueBackend
from cutover.control import ControlPlane, backend_key
from cutover.errors import PreconditionError
from cutover.held import find_stuck
from cutover.record import JobState

log = logging.getLogger("cutover.verify")

_WAITING = {JobState.QUEUED.value, JobState.SCHEDULED.value, JobState.HELD.value}


@dataclasses.dataclass
class VerifyReport:
    source: str
    target: str
    read: dict[str, int] = dataclasses.field(default_factory=dict)
    queues: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    lost: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    duplicated: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    mismatched: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pending: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stuck: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # held, no live drain
    ran_on_target: int = 0
    verified: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.mismatched or self.pending
                    or self.stuck)

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.duplicated or self.mismatched)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "clean": self.clean,
                "verified": self.verified, "ran_on_target": self.ran_on_target,
                "read": self.read, "queues": self.queues, "lost": self.lost,
                "duplicated": self.duplicated, "mismatched": self.mismatched,
                "pending": self.pending, "stuck": self.stuck, "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        lines = [f"verify {self.source} -> {self.target}: "
                 + ("CLEAN" if self.clean else "NOT CLEAN"),
                 f"  jobs read: source {self.read.get('s', 0)}, target {self.read.get('t', 0)}; "
                 f"moved jobs verified: {self.verified} ({self.ran_on_target} ran on the target "
                 "since)"]
        for name in ("lost", "duplicated", "mismatched", "pending", "stuck"):
            items: list[dict[str, Any]] = getattr(self, name)
            if items:
                ids = ", ".join(str(i["id"]) for i in items[:20])
                more = f" (+{len(items) - 20} more)" if len(items) > 20 else ""
                lines.append(f"  {name}: {len(items)}: {ids}{more}")
        return "\n".join(lines)


def verify(source: QueueBackend, source_url: str, target: QueueBackend, target_url: str,
           control: ControlPlane, batch_size: int = 5000) -> VerifyReport:
    started = time.monotonic()
    skey, tkey = backend_key(source_url), backend_key(target_url)
    report = VerifyReport(source=skey, target=tkey)
    if not control.lock_pair(skey, tkey):
        raise PreconditionError("a drain between these two backends is running; verify once "
                                "it is done", source=skey, target=tkey)
    try:
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
                _compare(conn, control, pair, differing, target, report)
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
    finally:
        control.unlock_pair(skey, tkey)
    report.seconds = time.monotonic() - started
    return report


def _compare(conn: Any, control: ControlPlane, pair: dict[str, str], queues: list[str],
             target: QueueBackend, report: VerifyReport) -> None:
    rows = conn.execute(control.query("verify_settled"), {**pair, "queues": queues}).fetchall()
    for job_id, queue, ldigest, tstate, tdigest, sstate, content, tattempts in rows:
        if sstate is not None:
            report.duplicated.append({"id": job_id, "source_state": sstate,
                                      "target_state": tstate})
            continue
        if tstate is None:
            report.lost.append({"id": job_id, "queue": queue,
                                "reason": "the ledger says it moved; neither backend has it"})
            continue
        if tdigest == ldigest:
            continue
        expected = json.loads(content) if content else {}
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
