"""What a drain is told (:class:`DrainOptions`) and what it says (:class:`DrainReport`)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class DrainOptions:
    queues: list[str] | None = None
    batch_size: int = 1000
    rate: float | None = None
    include_failed: bool = False
    wait_running: float = 0.0
    dry_run: bool = False
    workers: int = 1  # processes that split the source between them


@dataclasses.dataclass
class DrainReport:
    moved: int = 0
    recovered: int = 0
    left: dict[str, list[dict[str, str]]] = dataclasses.field(default_factory=dict)
    running: list[str] = dataclasses.field(default_factory=list)
    planned: dict[str, int] = dataclasses.field(default_factory=dict)
    plan_jobs: dict[str, list[dict[str, str]]] = dataclasses.field(default_factory=dict)
    lost: list[str] = dataclasses.field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0
    run_id: str = ""
    # The ids already in ``left``: a job is reported once however many passes or workers meet it.
    _left_ids: set[str] = dataclasses.field(default_factory=set, repr=False, compare=False)

    @property
    def left_count(self) -> int:
        return sum(len(v) for v in self.left.values()) + len(self.running)

    @property
    def rate(self) -> float:
        return self.moved / self.seconds if self.seconds > 0 else 0.0

    def leave(self, cls: str, job_id: str, task: str, queue: str, reason: str) -> None:
        """The one place a job left in place is recorded: once per id, under its class."""
        if job_id not in self._left_ids:
            self._left_ids.add(job_id)
            self.left.setdefault(cls, []).append(
                {"id": job_id, "task": task, "queue": queue, "reason": reason})

    def merge(self, other: DrainReport) -> None:
        """Add a drain worker process's report (the same run's share) to this one."""
        self.moved += other.moved
        self.lost += other.lost
        self.stopped |= other.stopped
        for cls, jobs in other.left.items():
            for job in jobs:
                self.leave(cls, job["id"], job["task"], job["queue"], job["reason"])

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "moved": self.moved, "recovered": self.recovered,
                "left": self.left, "running": self.running, "planned": self.planned,
                "lost": self.lost, "stopped": self.stopped, "seconds": round(self.seconds, 3),
                "jobs_per_second": round(self.rate, 1)}
