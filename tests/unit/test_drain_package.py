"""The shape of cutover.drain: modules without cycles, a process group that knows nothing of
Drain, one place for a put record's state and for "left in place"."""

from __future__ import annotations

import ast
import datetime as dt
import pickle
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import cutover.drain
from cutover.drain import DrainReport
from cutover.drain.processes import Finished
from cutover.drain.steps import put_state
from cutover.record import JobRecord, JobState

DRAIN_DIR = Path(cutover.drain.__file__).parent
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(DRAIN_DIR)]))


@pytest.mark.parametrize("module", MODULES)
def test_each_drain_module_imports_alone(module: str) -> None:
    """In a fresh interpreter, so an import cycle cannot hide behind a module already loaded."""
    done = subprocess.run([sys.executable, "-c", f"import cutover.drain.{module}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _imports(module: str) -> set[str]:
    tree = ast.parse((DRAIN_DIR / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def test_only_core_imports_core_and_the_process_group_knows_nothing_of_drain() -> None:
    assert set(MODULES) >= {"core", "pipeline", "steps", "recovery", "report", "processes"}
    for module in MODULES:
        if module not in ("core", "__init__"):
            assert "cutover.drain.core" not in _imports(module), module
    assert "cutover.drain" not in _imports("processes")  # the package would bring Drain in
    tree = ast.parse((DRAIN_DIR / "processes.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "Drain" not in names


def _record(state: JobState, run_at: dt.datetime | None = None) -> JobRecord:
    from cutover.testing import tasks
    from cutover.testing.tasks import registry

    return registry.make_record(tasks.add, (1, 2)).replace(state=state, run_at=run_at)


def test_put_state_decides_the_state_a_job_arrives_in() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    later, earlier = now + dt.timedelta(hours=1), now - dt.timedelta(hours=1)
    assert put_state(_record(JobState.FAILED, later), now) is JobState.FAILED
    assert put_state(_record(JobState.HELD, later), now) is JobState.SCHEDULED
    assert put_state(_record(JobState.SCHEDULED, earlier), now) is JobState.QUEUED
    assert put_state(_record(JobState.DEFERRED), now) is JobState.QUEUED
    assert put_state(_record(JobState.HELD), now) is JobState.QUEUED


def test_a_job_is_left_in_place_once_however_many_workers_meet_it() -> None:
    parent, first, second = DrainReport(), DrainReport(moved=3), DrainReport(moved=4, stopped=True)
    first.leave("in_place", "a", "t", "q", "why")
    first.leave("in_place", "a", "t", "q", "again")  # a second pass meets it: not twice
    second.leave("in_place", "a", "t", "q", "other worker")
    second.leave("unsupported", "b", "t", "q", "refused")
    second.lost.append("c")
    for report in (first, second):
        # What a worker sends crosses a pipe: pickled and back, like the message itself.
        parent.merge(pickle.loads(pickle.dumps(Finished(report))).report)
    assert parent.moved == 7 and parent.stopped and parent.lost == ["c"]
    assert parent.left == {"in_place": [{"id": "a", "task": "t", "queue": "q", "reason": "why"}],
                           "unsupported": [{"id": "b", "task": "t", "queue": "q",
                                            "reason": "refused"}]}
    assert parent.left_count == 2
