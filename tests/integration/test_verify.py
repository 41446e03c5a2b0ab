"""`cutover verify` tells apart clean, ran-on-the-target, pending, lost, never-moved and
finished-then-deleted, in both directions, with the workers of either side having run the jobs.
Each test here is meant to fail when verify reassures where it should not (or cries loss where
the target's own retention removed finished jobs)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter
from typing import Any

import procrastinate
import psycopg
import pytest
import redis
from cutover_procrastinate import make_app
from procrastinate import sql as procrastinate_sql

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.control import backend_key
from cutover.record import JobRecord, utcnow
from cutover.testing import tasks
from cutover.testing.contract import run_burst
from cutover.testing.tasks import registry
from tests.integration.drain_helpers import invoke, invoke_json, run_cli
from tests.integration.plain_workers import run_plain_procrastinate_worker, run_plain_rq_worker

pytestmark = [pytest.mark.rq, pytest.mark.pg]

DIRECTIONS = ["rq->pg", "pg->rq"]


def pair(urls: tuple[str, str], direction: str) -> tuple[str, str]:
    rq_url, pg_url = urls
    return (rq_url, pg_url) if direction == "rq->pg" else (pg_url, rq_url)


def verify(source: str, target: str) -> tuple[int, dict[str, Any]]:
    return invoke_json(source, target, "verify", "--report", os.devnull)


def drained(source: str, target: str, records: list[JobRecord]) -> QueueBackend:
    """Enqueue ``records`` on the source, drain them, return the target backend."""
    adapters.open_backend(source).enqueue(records)
    code, report = invoke_json(source, target, "drain", "--yes")
    assert code == 0 and report["moved"] == len(records)
    return adapters.open_backend(target)


def ids(items: list[dict[str, Any]]) -> list[str]:
    return sorted(str(i["id"]) for i in items)


def native_id(pg_url: str, cutover_id: str) -> int:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT job_id FROM cutover_jobs WHERE cutover_id = %s",
                           (cutover_id,)).fetchone()
    assert row is not None
    return int(row[0])


# -- a pair with no history -------------------------------------------------------------------
def test_verify_refuses_a_pair_nothing_was_moved_between(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    never = invoke(rq_url, pg_url, "verify", "--report", os.devnull)
    assert never.exit_code == 3
    assert "nothing was moved between these two stores" in never.output
    assert "swap" not in never.output
    drained(rq_url, pg_url, [registry.make_record(tasks.add, (i, 1)) for i in range(3)])
    swapped = invoke(pg_url, rq_url, "verify", "--report", os.devnull)
    assert swapped.exit_code == 3
    assert "nothing was moved between these two stores" in swapped.output
    assert "3 job(s) moved the other way" in swapped.output
    assert "swap --source and --target" in swapped.output
    # The stores are named for people (adapter and redacted URL), not by their identity keys.
    assert f"from {backend_key(rq_url)} to {backend_key(pg_url)}" in swapped.output
    assert verify(rq_url, pg_url)[0] == 0


# -- the normal order: drain, the target's workers run the jobs, verify ------------------------
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_verify_is_clean_after_the_cutover_worker_ran_the_moved_jobs(
        urls: tuple[str, str], direction: str) -> None:
    source, target_url = pair(urls, direction)
    ok = [registry.make_record(tasks.add, (i, 1)) for i in range(4)]
    failed = registry.make_record(tasks.boom, ()).replace(max_attempts=1)
    retrying = registry.make_record(tasks.slow_retry, ())  # fails, retry due in 30 s
    target = drained(source, target_url, [*ok, failed, retrying])
    run_burst(target)
    assert sorted(c[0] for c in tasks.calls) == ["add"] * 4 + ["boom", "slow_retry"]
    code, report = verify(source, target_url)
    assert code == 0 and report["clean"] is True
    assert report["verified"] == 6
    # Every one of them changed on the target by running there (attempts, state); the retry
    # waits again, with an attempt used: all six are counted as run, none as altered.
    assert report["ran_on_target"] == 6
    assert report["mismatched"] == report["lost"] == report["duplicated"] == []
    assert report["pending"] == report["finished_deleted"] == []


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_verify_is_clean_after_the_plain_workers_of_the_target_ran_the_moved_jobs(
        urls: tuple[str, str], direction: str) -> None:
    source, target = pair(urls, direction)
    drained(source, target, [registry.make_record(tasks.add, (i, 2)) for i in range(3)])
    if direction == "rq->pg":
        run_plain_procrastinate_worker(target)
    else:
        run_plain_rq_worker(target)
    assert len(tasks.calls) == 3
    code, report = verify(source, target)
    assert code == 0 and report["verified"] == 3, report
    assert report["mismatched"] == report["lost"] == []
    # procrastinate's worker counts the attempt; RQ's leaves cutover's fields alone but stamps
    # the end (ended_at): both are evidence that the copy ran.
    assert report["ran_on_target"] == 3 and report["jobs"] == {"ran": 3}


def test_a_waiting_job_altered_on_the_target_is_still_mismatched(urls: tuple[str, str]) -> None:
    """The other side of "ran on the target": a job that has not run and changed is reported."""
    rq_url, pg_url = urls
    records = [registry.make_record(tasks.add, (i, 2)) for i in range(3)]
    drained(rq_url, pg_url, records)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE procrastinate_jobs SET queue_name = 'elsewhere' WHERE id = %s",
                     (native_id(pg_url, records[1].id),))
    code, report = verify(rq_url, pg_url)
    assert code == 1 and ids(report["mismatched"]) == [records[1].id]
    assert report["ran_on_target"] == 0


# -- moves in flight ------------------------------------------------------------------------
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_verify_reports_moves_in_flight_as_pending_then_clean_once_finished(
        urls: tuple[str, str], direction: str) -> None:
    source, target = pair(urls, direction)
    records = [registry.make_record(tasks.add, (i, 3)) for i in range(6)]
    adapters.open_backend(source).enqueue(records)
    killed = run_cli(source, target, "drain", "--yes", "--batch-size", "3",
                     env={"CUTOVER_FAULT": "after_put:1"})
    assert killed.returncode == -9, killed.stderr
    code, report = verify(source, target)
    assert code == 3 and report["clean"] is False
    pending = ids(report["pending"])
    assert pending and set(pending) <= {r.id for r in records}
    assert report["lost"] == report["duplicated"] == report["mismatched"] == []
    assert invoke_json(source, target, "drain", "--yes")[0] == 0
    code, report = verify(source, target)
    assert code == 0 and report["pending"] == [] and report["verified"] == 6


# -- retention: finished jobs deleted before verify ------------------------------------------
def test_procrastinate_retention_gives_finished_since_deleted_and_a_deleted_waiting_job_is_lost(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    ok = [registry.make_record(tasks.add, (i, 4)) for i in range(3)]
    failed = registry.make_record(tasks.boom, ()).replace(max_attempts=1)
    waiting = registry.make_record(tasks.add, (9, 9),
                                   run_at=utcnow() + dt.timedelta(hours=1))
    target = drained(rq_url, pg_url, [*ok, failed, waiting])
    run_burst(target)
    # procrastinate's own retention query (`procrastinate ... remove_old_jobs`), as it ships.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        deleted = conn.execute(procrastinate_sql.queries["delete_old_jobs"], {
            "nb_hours": 0, "queue": None, "statuses": ["succeeded", "failed"]}).rowcount
    assert deleted == 4
    code, report = verify(rq_url, pg_url)
    assert code == 0 and report["clean"] is True, report
    assert ids(report["finished_deleted"]) == sorted(r.id for r in [*ok, failed])
    assert Counter(i["status"] for i in report["finished_deleted"]) == {"succeeded": 3,
                                                                       "failed": 1}
    # A moved job deleted before it ever ran is lost, by id, whatever retention did around it.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DELETE FROM procrastinate_jobs WHERE id = %s",
                     (native_id(pg_url, waiting.id),))
    code, report = verify(rq_url, pg_url)
    assert code == 1 and ids(report["lost"]) == [waiting.id]
    assert "deleted from the target while todo" in report["lost"][0]["reason"]
    assert len(report["finished_deleted"]) == 4


@pytest.mark.parametrize("app", ["plain App", "make_app"])
def test_procrastinate_worker_deleting_jobs_as_they_finish_is_not_a_loss(
        urls: tuple[str, str], app: str) -> None:
    rq_url, pg_url = urls
    done = [registry.make_record(tasks.add, (i, 5)) for i in range(2)]
    cancelled = registry.make_record(tasks.add, (7, 7), run_at=utcnow() + dt.timedelta(hours=1))
    drained(rq_url, pg_url, [*done, cancelled])
    cancel_id = native_id(pg_url, cancelled.id)
    run_plain_procrastinate_worker(pg_url, delete_jobs="always",
                                   app=make_app(registry, pg_url) if app == "make_app" else None)
    assert len(tasks.calls) == 2
    plain = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=pg_url))
    with plain.open():
        assert plain.job_manager.cancel_job_by_id(cancel_id, delete_job=True)
    code, report = verify(rq_url, pg_url)
    statuses = {i["id"]: i["status"] for i in report["finished_deleted"]}
    assert statuses == {r.id: "succeeded or failed" for r in done}
    # Cancelled before it ever ran: the job did not run, whatever the operator meant by it.
    assert code == 1 and ids(report["lost"]) == [cancelled.id], report
    assert "cancelled on the target before it ran" in report["lost"][0]["reason"]


def test_rq_result_expiry_after_the_cutover_worker_ran_gives_finished_since_deleted(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    ok = [registry.make_record(tasks.add, (i, 6)) for i in range(3)]
    failed = registry.make_record(tasks.boom, ()).replace(max_attempts=1)
    waiting = registry.make_record(tasks.add, (8, 8), run_at=utcnow() + dt.timedelta(hours=1))
    target = drained(pg_url, rq_url, [*ok, failed, waiting])
    run_burst(target)
    conn = redis.Redis.from_url(rq_url)
    for record in [*ok, failed]:
        expire_like_rq(conn, record)
    code, report = verify(pg_url, rq_url)
    assert code == 0, report
    statuses = {i["id"]: (i["status"], i["evidence"]) for i in report["finished_deleted"]}
    assert statuses == {**{r.id: ("succeeded", "cutover:ended") for r in ok},
                        failed.id: ("failed", "cutover:ended")}
    expire_like_rq(conn, waiting)  # a waiting job gone: no end was ever recorded
    code, report = verify(pg_url, rq_url)
    assert code == 1 and ids(report["lost"]) == [waiting.id]


def test_rq_job_with_result_ttl_0_run_by_the_cutover_worker_is_finished_since_deleted(
        urls: tuple[str, str]) -> None:
    """result_ttl=0: RQ (and the cutover worker, as RQ does) keeps nothing of the finished job;
    cutover:ended still says it ran."""
    rq_url, pg_url = urls
    record = registry.make_record(tasks.add, (2, 2))
    target = drained(pg_url, rq_url, [record])
    conn = redis.Redis.from_url(rq_url)
    conn.hset(f"rq:job:{record.id}", "result_ttl", 0)
    run_burst(target)
    assert tasks.calls == [("add", {"a": 2, "b": 2})]
    deadline = time.monotonic() + 5  # the cutover worker lets the hash go a second later
    while conn.exists(f"rq:job:{record.id}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not conn.exists(f"rq:job:{record.id}")
    code, report = verify(pg_url, rq_url)
    assert code == 0 and [(i["id"], i["status"]) for i in report["finished_deleted"]] == [
        (record.id, "succeeded")]


def test_rq_traces_of_a_plain_rq_worker_count_until_rq_cleans_them(
        urls: tuple[str, str]) -> None:
    """A plain RQ worker leaves no cutover record: its finished registry entry outlives the job
    hash until RQ's cleanup; after that the job cannot be told from a lost one (the documented
    limit: keep result_ttl longer than the time to verify)."""
    rq_url, pg_url = urls
    record = registry.make_record(tasks.add, (1, 1))
    drained(pg_url, rq_url, [record])
    run_plain_rq_worker(rq_url)
    conn = redis.Redis.from_url(rq_url)
    conn.delete(f"rq:job:{record.id}", f"rq:results:{record.id}")  # result_ttl passed
    code, report = verify(pg_url, rq_url)
    assert code == 0 and ids(report["finished_deleted"]) == [record.id]
    assert "registry" in report["finished_deleted"][0]["evidence"]
    conn.zrem(f"rq:finished:{record.queue}", record.id)  # RQ's registry cleanup
    code, report = verify(pg_url, rq_url)
    assert code == 1 and ids(report["lost"]) == [record.id]


def test_an_end_recorded_before_a_job_was_moved_back_does_not_count(
        urls: tuple[str, str]) -> None:
    """Evidence speaks of the job's latest stay only: a job that failed on RQ, went to
    PostgreSQL, was retried there and came back waiting is lost when it vanishes, even though
    RQ once recorded that it failed."""
    rq_url, pg_url = urls
    record = registry.make_record(tasks.boom, ()).replace(max_attempts=1)
    rq_side = drained(pg_url, rq_url, [record])
    run_burst(rq_side)
    assert invoke_json(rq_url, pg_url, "drain", "--yes", "--include-failed")[0] == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:  # an operator retries it
        conn.execute("SELECT procrastinate_retry_job_v2(%s, now() + interval '1 hour', NULL, "
                     "NULL, NULL)", (native_id(pg_url, record.id),))
    assert invoke_json(pg_url, rq_url, "drain", "--yes")[0] == 0
    conn = redis.Redis.from_url(rq_url)
    expire_like_rq(conn, record)
    code, report = verify(pg_url, rq_url)
    assert code == 1 and ids(report["lost"]) == [record.id]


# -- helpers ----------------------------------------------------------------------------------
def expire_like_rq(conn: redis.Redis, record: JobRecord) -> None:
    """What RQ's TTLs and registry cleanup leave of a job: nothing of its own."""
    conn.delete(f"rq:job:{record.id}", f"rq:results:{record.id}")
    for registry_name in ("finished", "failed", "scheduled"):
        conn.zrem(f"rq:{registry_name}:{record.queue}", record.id)
    conn.lrem(f"rq:queue:{record.queue}", 0, record.id)


# -- pinned by mutation testing (benchmarks/MUTATION.md) ----------------------------------------
def reinsert_on_source(source: str, record: JobRecord, saved: dict[bytes, bytes] | None) -> None:
    """Put a released job back on the source as a producer or a buggy release could: RQ gets
    the job's exact hash back (and its id in its queue), PostgreSQL the same record again."""
    if saved is None:
        adapters.open_backend(source).put([record])
        return
    conn = redis.Redis.from_url(source)
    conn.hset(f"rq:job:{record.id}", mapping=saved)
    conn.rpush(f"rq:queue:{record.queue}", record.id)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_released_job_back_on_the_source_is_duplicated_though_fingerprints_agree(
        urls: tuple[str, str], direction: str) -> None:
    """The fingerprints compare the ledger with the target only: a released job whose source
    copy is back is a duplicate even when every queue's fingerprint is equal (the "ids in both
    backends" check must not depend on the fingerprint shortcut)."""
    source, target = pair(urls, direction)
    records = [registry.make_record(tasks.add, (i, 5)) for i in range(4)]
    dup = records[2]
    saved: dict[bytes, bytes] | None = None
    if direction == "rq->pg":
        adapters.open_backend(source).enqueue(records)
        saved = redis.Redis.from_url(source).hgetall(f"rq:job:{dup.id}")
        assert saved
        code, moved = invoke_json(source, target, "drain", "--yes")
        assert code == 0 and moved["moved"] == 4
    else:
        drained(source, target, records)
    assert verify(source, target)[0] == 0
    reinsert_on_source(source, dup, saved)
    code, report = verify(source, target)
    assert code == 1 and report["clean"] is False
    assert ids(report["duplicated"]) == [dup.id]
    # The shortcut saw nothing wrong: only the ids-in-both check can have found it.
    assert report["queues"][dup.queue]["fingerprint_equal"] is True
    assert report["lost"] == report["mismatched"] == report["pending"] == []


def set_target_attempts(target: str, pg_url: str, record: JobRecord, attempts: int) -> None:
    """Change the attempts a waiting job has used on the target, by hand."""
    if target == pg_url:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE procrastinate_jobs SET attempts = %s WHERE id = %s",
                         (attempts, native_id(pg_url, record.id)))
    else:
        redis.Redis.from_url(target).hset(f"rq:job:{record.id}", "cutover_attempts", attempts)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_fewer_attempts_on_the_target_is_an_alteration_more_is_a_run(
        urls: tuple[str, str], direction: str) -> None:
    """Only attempts used since the move (more than the ledger's) mean the job ran on the
    target; a waiting job whose attempts went back (reset by hand, a buggy put) was altered."""
    source, target = pair(urls, direction)
    records = [registry.make_record(tasks.add, (i, 6)).replace(attempts=2, max_attempts=5)
               for i in range(3)]
    drained(source, target, records)
    lowered, raised = records[0], records[1]
    set_target_attempts(target, urls[1], lowered, 0)
    set_target_attempts(target, urls[1], raised, 3)
    code, report = verify(source, target)
    assert code == 1 and ids(report["mismatched"]) == [lowered.id]
    assert report["mismatched"][0]["fields"]["attempts"] == {"ledger": 2, "target": 0}
    assert report["ran_on_target"] == 1
    assert report["lost"] == report["duplicated"] == []
