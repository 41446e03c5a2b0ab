"""The runs family: drain runs (their switch and the pair lock that lets one drain at a time run
between two stores) and failure records. SQL in ``sql/runs.sql``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterable
from typing import Any, TypedDict

from cutover.control.plane import Plumbing
from cutover.errors import BackendUnavailableError


class RunRecord(TypedDict):
    """One drain run's record (stores by identity key)."""

    run_id: str
    kind: str
    source: str
    target: str
    state: str


@dataclasses.dataclass(frozen=True)
class Failure:
    """A job a run could not handle: its id, the backend, the class of failure and why."""

    cutover_id: str
    backend: str
    cls: str
    reason: str


class Runs(Plumbing):
    """Drain runs and failures."""

    def failures_summary(self) -> dict[str, int]:
        with self.tx("reading failures") as conn:
            return {r[0]: r[1] for r in conn.execute(self.query("failures_summary")).fetchall()}

    def fail(self, run_id: str, items: Iterable[Failure | tuple[str, str, str, str]]) -> None:
        """Record failures: :class:`Failure` values, or (cutover id, backend, class, reason)."""
        rows = [f if isinstance(f, Failure) else Failure(*f) for f in items]
        if not rows:
            return
        with self.tx("recording failures") as conn:
            conn.execute(self.query("failure_add"), {
                "run_id": run_id, "id": [r.cutover_id for r in rows],
                "backend": [r.backend for r in rows], "class": [r.cls for r in rows],
                "reason": [r.reason for r in rows]})

    def lock_pair(self, source: str, target: str) -> bool:
        """Take the session lock that lets one drain at a time run between two backends."""
        self.require_session("a drain's pair lock")
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

    def run(self, run_id: str) -> RunRecord | None:
        """One run's record (kind, source, target, state), or None."""
        with self.tx("reading the run") as conn:
            row = conn.execute(self.query("run_get"), {"run_id": run_id}).fetchone()
        if row is None:
            return None
        return RunRecord(run_id=run_id, kind=row[0], source=row[1], target=row[2], state=row[3])

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
