"""Paths of the drain and audit that nothing else runs: the lock against a second drain, an id
the target already gives to another job, a move the ledger started that no backend can finish,
and audit's lossy / unsupported / history classes. Each against real RQ and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import redis
import rq

from cutover import adapters
from cutover.record import JobState
from cutover.testing import tasks
from cutover.testing.tasks import registry
from cutover.worker import Worker
from tests.integration.drain_helpers import APP, invoke_json, run_cli

pytestmark = [pytest.mark.rq, pytest.mark.pg]


def test_a_second_drain_of_the_same_pair_is_refused_while_the_first_runs(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    records = [registry.make_record(tasks.add, (i, 1)) for i in range(200)]
    source.enqueue(records)
    first = subprocess.Popen(
        [sys.executable, "-m", "cutover", "--app", APP, "--source", rq_url, "--target", pg_url,
         "drain", "--yes", "--batch-size", "2", "--rate", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while target.get(records[0].id) is None:  # the first drain holds the lock and moves
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first drain moved nothing"
            time.sleep(0.05)
        second = run_cli(rq_url, pg_url, "--json", "drain", "--yes")
        assert second.returncode == 3, second.stdout + second.stderr
        assert "another drain" in second.stderr and "running" in second.stderr, second.stderr
        checked = run_cli(rq_url, pg_url, "verify", "--report", os.devnull)
        assert checked.returncode == 3, checked.stdout + checked.stderr
        assert "drain" in checked.stderr and "running" in checked.stderr, checked.stderr
        assert first.poll() is None, "the first drain must still be running"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    # Refused means refused: the second drain moved nothing and held nothing of its own.
    assert not [r for r in source.snapshot(states=[JobState.HELD])]
    assert run_cli(rq_url, pg_url, "drain", "--yes").returncode == 0
    assert all(target.get(r.id) is not None for r in records)
    source.close()
    target.close()


def test_an_id_the_target_gives_to_another_job_is_left_in_place_and_named(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    records = [registry.make_record(tasks.add, (i, 1), job_id=f"job-{i}") for i in range(6)]
    source.enqueue(records)
    squatter = registry.make_record(tasks.add, (1000, 1), job_id="job-3")  # same id, other job
    target.put([squatter])

    code, report = invoke_json(rq_url, pg_url, "drain", "--yes", "--batch-size", "3")
    assert code == 3, report
    assert report["moved"] == 5
    assert [j["id"] for j in report["left"]["id_conflict"]] == ["job-3"]
    # The target's own job is untouched; ours is back where RQ's workers run it.
    on_target = target.get("job-3")
    assert on_target is not None and on_target.digest() == squatter.digest()
    back = source.get("job-3")
    assert back is not None and back.state is JobState.QUEUED and back.holder is None
    assert b"job-3" in redis.Redis.from_url(rq_url).lrange("rq:queue:default", 0, -1)
    for r in records:
        if r.id != "job-3":
            assert source.get(r.id) is None and target.get(r.id) is not None, r.id
    with psycopg.connect(pg_url) as conn:
        failures = conn.execute("SELECT cutover_id, class FROM cutover.failures").fetchall()
    assert ("job-3", "id_conflict") in failures


def test_a_move_no_backend_can_finish_is_reported_lost_with_exit_1(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source, target = adapters.open_backend(pg_url), adapters.open_backend(rq_url)
    records = [registry.make_record(tasks.add, (i, 1)) for i in range(8)]
    source.enqueue(records)
    # Back to RQ the target does not share the ledger's transaction: the drain writes its
    # intent ("moving"), then puts. Killed in between, its first batch is held on the source.
    killed = run_cli(pg_url, rq_url, "drain", "--yes", "--batch-size", "4",
                     env={"CUTOVER_FAULT": "after_intent:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with psycopg.connect(pg_url) as conn:
        moving = [i for (i,) in conn.execute(
            "SELECT cutover_id FROM cutover.ledger WHERE state = 'moving' ORDER BY 1")]
    held = {r.id for r in source.snapshot(states=[JobState.HELD])}
    assert len(moving) == 4 and set(moving) <= held, (moving, held)
    gone = moving[0]
    source.remove([gone])  # something outside the toolkit deleted it meanwhile
    code, report = invoke_json(pg_url, rq_url, "drain", "--yes")
    assert code == 1, report
    assert report["lost"] == [gone]
    assert report["recovered"] == 3 and report["moved"] == 4
    for r in records:
        if r.id != gone:
            assert target.get(r.id) is not None and source.get(r.id) is None, r.id
    source.close()
    target.close()


def test_audit_names_lossy_unsupported_and_history_jobs(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    conn = redis.Redis.from_url(rq_url)
    queue = rq.Queue("default", connection=conn)
    queue.enqueue(tasks.add, 1, 2, job_id="plain")
    queue.enqueue(tasks.add, 3, 4, result_ttl=600, job_id="lossy")  # RQ-only: kept 600 s
    queue.enqueue(tasks.echo, z=complex(1, 2), job_id="unsupported")  # the codec cannot carry
    rq.Queue("done", connection=conn).enqueue(tasks.add, 5, 6, job_id="done")
    backend = adapters.open_backend(rq_url)
    Worker(backend, registry, burst=True, poll_interval=0.05,
           queues=["done"]).run(install_signal_handlers=False)
    assert backend.get("done").state is JobState.FINISHED  # type: ignore[union-attr]

    code, doc = invoke_json(rq_url, pg_url, "audit")
    assert code == 3, doc  # the unsupported job would be left behind
    assert doc["by_class"] == {"movable": 1, "lossy": 1, "unsupported": 1, "history": 1}
    jobs = doc["jobs"]
    assert [j["id"] for j in jobs["lossy"]] == ["lossy"]
    assert "result_ttl" in jobs["lossy"][0]["reason"]
    assert [j["id"] for j in jobs["unsupported"]] == ["unsupported"]
    assert "complex" in jobs["unsupported"][0]["reason"]
    assert "history" not in jobs, "history is not a problem: no details"
    assert doc["left_behind"] == {"unsupported": 1}
    # Lossy jobs move (history and unsupported ones do not): audit and drain agree.
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes")
    assert code == 3 and report["moved"] == 2, report
    assert [j["id"] for j in report["left"]["unsupported"]] == ["unsupported"]
    backend.close()
