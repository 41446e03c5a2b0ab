"""What `cutover verify` found, job by job: the report it returns and the CLI renders."""

from __future__ import annotations

import dataclasses
from typing import Any

#: The lists of jobs a report names by id, in the order the summary prints them. The first
#: four fail verification (exit 1): ``lost`` (no run and no copy a worker will run),
#: ``duplicated`` (ran twice, or back where it was moved from), ``mismatched`` (altered),
#: ``unaccounted`` (a copy left a backend with no record of how: run unfenced with its record
#: expired, or deleted behind the toolkit's back). ``pending``, ``stuck`` (held with no live
#: drain) and ``stranded`` (deferred, its parents done, queued by nothing but a drain) keep it
#: from being clean (exit 3);
#: ``finished_deleted`` is a fact, not a fault (the target's own retention removed jobs that
#: had ended, and the target's records say so).
FAILING = ("lost", "duplicated", "mismatched", "unaccounted")
UNSETTLED = ("pending", "stuck", "stranded")
LISTS = (*FAILING, *UNSETTLED, "finished_deleted")
_LABELS = {"finished_deleted": "finished, since deleted"}


@dataclasses.dataclass
class VerifyReport:
    """The outcome of one verify run between a source and a target."""

    source: str
    target: str
    read: dict[str, int] = dataclasses.field(default_factory=dict)
    queues: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    lost: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    duplicated: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    mismatched: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    unaccounted: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pending: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stuck: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # held, no live drain
    stranded: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    finished_deleted: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ran_on_target: int = 0
    #: Jobs that passed, by conclusion: ``ran`` (exactly once), ``failed`` (for good, once),
    #: ``waiting`` (where a worker runs it in ``phase``).
    jobs: dict[str, int] = dataclasses.field(default_factory=dict)
    phase: str | None = None
    verified: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.failed or any(getattr(self, name) for name in UNSETTLED))

    @property
    def failed(self) -> bool:
        return any(getattr(self, name) for name in FAILING)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "clean": self.clean,
                "verified": self.verified, "ran_on_target": self.ran_on_target,
                "phase": self.phase, "jobs": self.jobs,
                "read": self.read, "queues": self.queues,
                **{name: getattr(self, name) for name in LISTS},
                "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        lines = [f"verify {self.source} -> {self.target}: "
                 + ("CLEAN" if self.clean else "NOT CLEAN"),
                 f"  jobs read: source {self.read.get('s', 0)}, target {self.read.get('t', 0)}; "
                 f"ledger jobs verified: {self.verified} ({self.ran_on_target} ran on the target"
                 + "".join(f", {n} {k}" for k, n in sorted(self.jobs.items()))
                 + (f"; phase {self.phase}" if self.phase else "") + ")"]
        for name in LISTS:
            items: list[dict[str, Any]] = getattr(self, name)
            if items:
                ids = ", ".join(str(i["id"]) for i in items[:20])
                more = f" (+{len(items) - 20} more)" if len(items) > 20 else ""
                lines.append(f"  {_LABELS.get(name, name)}: {len(items)}: {ids}{more}")
        return "\n".join(lines)
