"""A job id used again after its first job was moved: producers that name their jobs
(``job_id=f"order-{n}"``) enqueue a new job under an id whose earlier job already moved and ran
on the target. The new job is not the old one: the drain must not take the target's old copy
for it (and delete the only copy of the new one from the source), and verify must not call the
pair clean while it was dropped."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest

from cutover import adapters
from cutover.record import JobState
from cutover.testing import tasks
from cutover.testing.contract import run_burst
from cutover.testing.tasks import registry
from tests.integration.drain_helpers import invoke_json
from tests.integration.plain_workers import run_plain_rq_worker

pytestmark = [pytest.mark.rq, pytest.mark.pg]


def ids(items: list[dict[str, Any]]) -> list[str]:
    return sorted(str(i["id"]) for i in items)


@pytest.mark.parametrize("direction", ["rq->pg", "pg->rq"])
def test_a_new_job_under_the_id_of_a_moved_and_finished_one_is_not_dropped(
        urls: tuple[str, str], direction: str) -> None:
    rq_url, pg_url = urls
    source_url, target_url = (rq_url, pg_url) if direction == "rq->pg" else (pg_url, rq_url)
    source, target = adapters.open_backend(source_url), adapters.open_backend(target_url)
    first = [registry.make_record(tasks.add, (i, 1), job_id=f"order-{i}") for i in range(3)]
    source.enqueue(first)
    code, report = invoke_json(source_url, target_url, "drain", "--yes")
    assert code == 0 and report["moved"] == 3, report
    run_burst(target)  # the target's workers run them; the target keeps them as finished
    assert len(tasks.calls) == 3
    assert target.get("order-1").state is JobState.FINISHED  # type: ignore[union-attr]

    again = registry.make_record(tasks.add, (100, 100), job_id="order-1")  # a new job
    source.enqueue([again])
    code, report = invoke_json(source_url, target_url, "drain", "--yes")
    # It cannot go where its id is taken: left on the source, named, exit 3.
    assert code == 3, report
    assert report["moved"] == 0 and report["recovered"] == 0, report
    assert ids(report["left"]["id_conflict"]) == ["order-1"], report
    kept = source.get("order-1")
    assert kept is not None and kept.holder is None, kept
    assert kept.state is JobState.QUEUED and kept.digest() == again.digest()
    # The old job is untouched on the target.
    old = target.get("order-1")
    assert old is not None and old.state is JobState.FINISHED

    # Nothing is lost: the old job finished on the target, the new one waits on the source.
    code, verified = invoke_json(source_url, target_url, "verify", "--report", os.devnull)
    assert verified["lost"] == [] and verified["mismatched"] == [], verified
    # A drain run again changes nothing, and still names it.
    code, report = invoke_json(source_url, target_url, "drain", "--yes")
    assert code == 3 and ids(report["left"]["id_conflict"]) == ["order-1"], report
    assert source.get("order-1") is not None
    source.close()
    target.close()


def cancel_on_procrastinate(pg_url: str, cutover_id: str) -> None:
    """procrastinate's own cancel (what `app.job_manager.cancel_job_by_id` runs)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT job_id FROM cutover_jobs WHERE cutover_id = %s",
                           (cutover_id,)).fetchone()
        assert row is not None
        assert conn.execute("SELECT procrastinate_cancel_job_v1(%s, false, false)",
                            (row[0],)).fetchone() == (row[0],)


@pytest.mark.parametrize("direction", ["rq->pg", "pg->rq"])
def test_the_same_job_enqueued_again_after_the_moved_one_ended_is_not_dropped(
        urls: tuple[str, str], direction: str) -> None:
    """The new job has the very content of the old one (same id, same arguments) and the old
    one ended without changing its content: cancelled on procrastinate, or run by RQ's own worker
    (which leaves cutover's attempt count alone). Content alone cannot tell them apart."""
    rq_url, pg_url = urls
    source_url, target_url = (rq_url, pg_url) if direction == "rq->pg" else (pg_url, rq_url)
    source, target = adapters.open_backend(source_url), adapters.open_backend(target_url)
    job = registry.make_record(tasks.add, (7, 1), job_id="order-7")
    source.enqueue([job])
    code, report = invoke_json(source_url, target_url, "drain", "--yes")
    assert code == 0 and report["moved"] == 1, report
    if direction == "rq->pg":
        cancel_on_procrastinate(pg_url, "order-7")
    else:
        run_plain_rq_worker(rq_url)
        assert len(tasks.calls) == 1
    ended = target.get("order-7")
    assert ended is not None and ended.state in (JobState.CANCELED, JobState.FINISHED), ended

    source.enqueue([registry.make_record(tasks.add, (7, 1), job_id="order-7")])
    code, report = invoke_json(source_url, target_url, "drain", "--yes")
    assert code == 3, report
    assert report["moved"] == 0 and ids(report["left"]["id_conflict"]) == ["order-7"], report
    kept = source.get("order-7")
    assert kept is not None and kept.state is JobState.QUEUED and kept.holder is None, kept
    code, verified = invoke_json(source_url, target_url, "verify", "--report", os.devnull)
    assert verified["lost"] == [], verified
    source.close()
    target.close()
