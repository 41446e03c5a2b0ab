"""How verify accounts for moved jobs neither backend holds (no server needed)."""

from __future__ import annotations

from cutover import InMemoryBackend
from cutover.testing import tasks
from cutover.testing.contract import run_burst
from cutover.testing.tasks import registry
from cutover.verify import _account_for_missing
from cutover.verify_report import VerifyReport


def test_missing_jobs_are_finished_since_deleted_only_on_the_targets_record() -> None:
    tasks.reset()
    target = InMemoryBackend()
    ran, waiting = registry.make_record(tasks.add, (1, 2)), registry.make_record(tasks.add, (3, 4))
    target.put([ran])
    run_burst(target)
    target.put([waiting])
    target.remove([ran.id, waiting.id])
    report = VerifyReport(source="s", target="t")
    missing = [(ran.id, "default"), (waiting.id, "default"), ("never-there", "default")]
    _account_for_missing(missing, target, report, batch_size=2)  # two lookups
    assert [(i["id"], i["status"]) for i in report.finished_deleted] == [(ran.id, "succeeded")]
    assert sorted(i["id"] for i in report.lost) == sorted([waiting.id, "never-there"])
    assert report.failed and "no record that it finished" in report.lost[0]["reason"]


def test_a_target_without_departure_records_makes_every_missing_job_lost() -> None:
    report = VerifyReport(source="s", target="t")
    _account_for_missing([("a", "q")], object(), report, batch_size=10)  # type: ignore[arg-type]
    assert [i["id"] for i in report.lost] == ["a"] and report.finished_deleted == []
