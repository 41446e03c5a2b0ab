"""How verify concludes the jobs its SQL could not settle alone: copies gone from a backend are
judged by that backend's departure records (no server needed)."""

from __future__ import annotations

from typing import Any

from cutover import InMemoryBackend
from cutover.phases import Phase
from cutover.testing import tasks
from cutover.testing.contract import run_burst
from cutover.testing.tasks import registry
from cutover.verify import _CHECK_COLUMNS, _conclude
from cutover.verify_report import VerifyReport


def gone_from_target(job_id: str) -> dict[str, Any]:
    """A released job (moved source -> target) whose target copy is gone with no reason in the
    control plane: the row verify_judge hands to _conclude."""
    row: dict[str, Any] = dict.fromkeys(_CHECK_COLUMNS, False)
    row.update(id=job_id, queue="default", lstate="released", forward=True, s_state=None,
               t_state=None, t_ask=True, runs=0, finished=0, how=None, content=None)
    return row


def test_copies_gone_are_finished_since_deleted_only_on_the_backends_record() -> None:
    tasks.reset()
    target = InMemoryBackend()
    ran, waiting = registry.make_record(tasks.add, (1, 2)), registry.make_record(tasks.add, (3, 4))
    target.put([ran])
    run_burst(target)
    target.put([waiting])
    target.remove([ran.id, waiting.id])
    report = VerifyReport(source="s", target="t")
    rows = [gone_from_target(i) for i in (ran.id, waiting.id, "never-there")]
    _conclude(rows, {"s": InMemoryBackend(), "t": target}, report, Phase.OFF)
    assert [(i["id"], i["status"]) for i in report.finished_deleted] == [(ran.id, "succeeded")]
    assert sorted(i["id"] for i in report.lost) == sorted([waiting.id, "never-there"])
    assert report.jobs == {"ran": 1}
    lost = {i["id"]: i["reason"] for i in report.lost}
    assert report.failed and "has no record that it finished" in lost["never-there"]


def test_a_backend_without_departure_records_makes_every_gone_copy_lost() -> None:
    report = VerifyReport(source="s", target="t")
    _conclude([gone_from_target("a")], {"s": object(), "t": object()},  # type: ignore[dict-item]
              report, Phase.OFF)
    assert [i["id"] for i in report.lost] == ["a"] and report.finished_deleted == []
