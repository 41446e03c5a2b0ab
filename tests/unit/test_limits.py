"""What procrastinate, memory and the ledger declare they cannot hold, and how the one
classification uses it (no server: these checks read only the record)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cutover_procrastinate.backend import ProcrastinateBackend

from cutover import InMemoryBackend
from cutover.audit import Classifier, JobClass
from cutover.limits import ledger_limits, size_limits
from cutover.record import JobRecord, JobState
from cutover.testing import tasks
from cutover.testing.tasks import registry

BASE = registry.make_record(tasks.add, (1, 2))


def pg(**change: Any) -> list[str]:
    return ProcrastinateBackend.cannot_hold(None, BASE.replace(**change))  # type: ignore[arg-type]


def test_procrastinate_limits_are_its_schema() -> None:
    assert pg() == []
    assert pg(queue="q" * 40) == [] and pg(task="t" * 128) == []
    # A queue name fits varchar(128) but also names a NOTIFY channel (63 bytes with a prefix).
    assert [r[:40] for r in pg(queue="q" * 41)] == ["queue name is 41 bytes long (at most 40:"]
    assert pg(queue="q" * 129)[0] == "queue name is 129 characters long (at most 128)"
    assert pg(task="t" * 129) == ["task name is 129 characters long (at most 128)"]
    assert pg(id="with:colon.and space") == []
    assert pg(id="line\nbreak") == ["job id contains a line break"]
    assert pg(job_key="k\x00") == ["job key contains a NUL character"]
    assert pg(error="boom\x00") == ["error contains a NUL character"]
    assert pg(priority=2**31 - 1) == [] and pg(priority=-(2**31)) == []
    assert pg(priority=2**31) == [f"priority {2**31} is out of range "
                                  f"({-(2**31)}..{2**31 - 1})"]
    assert pg(max_attempts=3, retry_intervals=(float("nan"),)) != []
    assert pg(run_at=dt.datetime(9999, 12, 30, tzinfo=dt.UTC)) == []
    assert "mark of a held job" in pg(run_at=dt.datetime(9999, 12, 31, tzinfo=dt.UTC))[0]


def test_memory_holds_anything() -> None:
    assert InMemoryBackend().cannot_hold(BASE.replace(id="a\nb\x00", queue="")) == []


def test_the_ledger_refuses_what_it_cannot_record() -> None:
    assert ledger_limits(BASE) == []
    assert ledger_limits(BASE.replace(id="a\nb")) == ["job id contains a line break"]
    assert ledger_limits(BASE.replace(id="")) == ["job id is empty"]
    assert ledger_limits(BASE.replace(task="t\x00")) == ["task name contains a NUL character"]
    assert ledger_limits(BASE.replace(queue="\ud800")) == [
        "queue name is not valid UTF-8 text (a lone surrogate)"]


@pytest.mark.parametrize("target", [InMemoryBackend()], ids=["memory"])
def test_the_classifier_names_every_reason_once_and_spares_history(target: Any) -> None:
    classify = Classifier(registry, target)
    _, verdict = classify(BASE.replace(id="a\nb"))
    assert verdict.job_class is JobClass.UNSUPPORTED
    assert verdict.reason == "job id contains a line break"
    finished = BASE.replace(id="a\nb", state=JobState.FINISHED)
    assert classify(finished)[1].job_class is JobClass.HISTORY

    class Strict(InMemoryBackend):
        def cannot_hold(self, record: JobRecord) -> list[str]:
            return ["job id contains a line break", "no room"]

    _, verdict = Classifier(registry, Strict())(BASE.replace(id="a\nb"))
    assert verdict.reason == "job id contains a line break; no room"
    _, verdict = Classifier(registry, Strict())(BASE.replace(state=JobState.FAILED))
    assert verdict.job_class is JobClass.UNSUPPORTED  # before "failed": it could not move


def test_a_job_larger_than_a_value_is_refused_by_its_size() -> None:
    record = BASE.replace(kwargs={"a": "é" * 100, "b": 2})
    size = len(record.content_json().encode())
    assert size_limits(record, "a small value", size) == []
    assert size_limits(record, "a small value", size - 1) == [
        f"the job is {size:,} bytes of JSON; a small value holds at most {size - 1:,}"]
