"""audit, drain, verify and status against real RQ and Procrastinate, both directions."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import time
import zlib
from typing import Any

import psycopg
import pytest
import redis
import rq

from cutover import InMemoryBackend, adapters
from cutover.control import ControlPlane
from cutover.drain import Drain, DrainOptions
from cutover.errors import BackendError
from cutover.record import JobRecord, JobState, utcnow
from cutover.testing import tasks
from cutover.testing.contract import SAMPLE_KWARGS
from cutover.testing.tasks import registry
from cutover.worker import Worker
from tests.integration.drain_helpers import invoke, invoke_json, slow_drain_in_thread
from tests.threads import errors_in_threads

pytestmark = [pytest.mark.rq, pytest.mark.pg]


def backlog(rq_url: str) -> dict[str, object]:
    """Jobs of every kind on RQ, the way an application and RQ itself leave them."""
    conn = redis.Redis.from_url(rq_url)
    queue = rq.Queue("default", connection=conn)
    b = adapters.open_backend(rq_url)
    made: dict[str, object] = {}
    made["plain"] = [queue.enqueue(tasks.add, i, 100).id for i in range(30)]
    made["scheduled"] = queue.enqueue_in(dt.timedelta(hours=2), tasks.add, 1, b=2,
                                         retry=rq.Retry(max=2, interval=[5, 10])).id
    rich = registry.make_record(tasks.echo, (), SAMPLE_KWARGS, job_key="rich-key", priority=4)
    made["rich"] = b.enqueue([rich])[0]
    retried = JobRecord(id="retried-once", task="cutover.testing.tasks.add",
                        kwargs={"a": 7, "b": 8}, attempts=1, max_attempts=3,
                        retry_intervals=(5.0, 10.0), queue="other")
    b.put([retried])
    made["retried"] = retried.id
    hostile = zlib.compress(pickle.dumps(("cutover.testing.tasks.add", None, (os.system,), {})))
    conn.hset("rq:job:hostile", mapping={"status": "queued", "origin": "default",
                                         "data": hostile})
    conn.rpush("rq:queue:default", "hostile")
    made["unknown"] = queue.enqueue("somewhere.else.task", 1).id
    running = queue.enqueue(tasks.add, 0, 0)
    assert b.claim(None, "busy-worker", lambda r: None if r.id == running.id else "x")
    made["running"] = running.id
    parent = queue.enqueue_in(dt.timedelta(hours=1), tasks.add, 9, 9)
    made["deferred"] = queue.enqueue(tasks.add, 3, 3, depends_on=parent).id
    made["parent"] = parent.id
    failed = registry.make_record(tasks.boom, ()).replace(state=JobState.FAILED, attempts=1,
                                                          error="ValueError: boom")
    b.put([failed])
    made["failed"] = failed.id
    b.close()
    return made


def test_audit_then_drain_then_verify_rq_to_procrastinate(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    made = backlog(rq_url)
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    originals = {r.id: registry.normalize(r) for r in source.snapshot()}

    code, audit = invoke_json(rq_url, pg_url, "audit")
    assert code == 3
    classes = audit["by_class"]
    assert classes["quarantined"] == 1 and classes["unknown_task"] == 1
    # in place: the running job, the deferred one and its parent (a dependency group resolves
    # on RQ: see tests/integration/test_dependencies.py)
    assert classes["in_place"] == 3 and classes["failed"] == 1
    assert classes["movable"] == 30 + 1 + 1 + 1  # plain, scheduled, rich, retried
    assert invoke_json(rq_url, pg_url, "audit", "--allow", "quarantined", "--allow",
                       "unknown_task", "--allow", "in_place", "--allow", "failed")[0] == 0

    code, plan = invoke_json(rq_url, pg_url, "drain", "--dry-run")
    assert code == 0 and plan["plan"]["movable"] == 33
    assert sum(per[JobState.HELD] for per in source.counts().values()) == 0

    code, report = invoke_json(rq_url, pg_url, "drain", "--yes", "--batch-size", "7")
    assert code == 3, report
    assert report["moved"] == 33
    assert {j["id"] for j in report["left"]["quarantined"]} == {"hostile"}
    assert {j["id"] for j in report["left"]["unknown_task"]} == {made["unknown"]}
    assert {j["id"] for j in report["left"]["failed"]} == {made["failed"]}
    assert {j["id"] for j in report["left"]["in_place"]} == {made["deferred"], made["parent"]}
    assert report["running"] == [made["running"]]

    moved_ids = set(made["plain"]) | {made[k] for k in ("scheduled", "rich", "retried")}  # type: ignore[misc]
    for job_id in moved_ids:
        moved = target.get(job_id)
        assert moved is not None, job_id
        assert moved.digest() == originals[job_id].digest(), moved.differences(
            originals[job_id])
        assert source.get(job_id) is None
    scheduled = target.get(str(made["scheduled"]))
    assert scheduled is not None and scheduled.state is JobState.SCHEDULED
    assert scheduled.max_attempts == 3 and scheduled.retry_intervals == (5.0, 10.0)
    retried = target.get("retried-once")
    assert retried is not None and retried.attempts == 1 and retried.queue == "other"
    for left_id in ("hostile", made["unknown"], made["failed"], made["deferred"], made["running"],
                    made["parent"]):
        assert source.get(str(left_id)) is not None

    code, verdict = invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)
    assert code == 0, verdict
    assert verdict["verified"] == 33 and verdict["clean"]

    Worker(target, registry, burst=True, poll_interval=0.05).run(install_signal_handlers=False)
    assert sorted(c[1]["a"] for c in tasks.calls if c[0] == "add" and c[1]["b"] == 100) == \
        list(range(30))
    assert ("echo", SAMPLE_KWARGS) in tasks.calls
    code, status = invoke_json(rq_url, pg_url, "status")
    assert code == 0 and status["phase"]["phase"] == "off"
    assert any(row["state"] == "released" and row["jobs"] == 33 for row in status["ledger"])
    source.close()
    target.close()


def test_drain_back_procrastinate_to_rq_runs_on_plain_rq(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    target = adapters.open_backend(pg_url)
    records = [registry.make_record(tasks.add, (i, 1)) for i in range(12)]
    records.append(registry.make_record(tasks.echo, (), SAMPLE_KWARGS, job_key="k",
                                        run_at=utcnow() + dt.timedelta(hours=3)))
    target.enqueue(records)
    code, report = invoke_json(pg_url, rq_url, "drain", "--yes", "--batch-size", "5")
    assert code == 0, report
    assert report["moved"] == 13
    rq_backend = adapters.open_backend(rq_url)
    for record in records:
        back = rq_backend.get(record.id)
        assert back is not None and back.digest() == record.digest()
    assert list(target.snapshot()) == []
    assert invoke_json(pg_url, rq_url, "verify", "--report", os.devnull)[0] == 0
    conn = redis.Redis.from_url(rq_url)
    rq.SimpleWorker([rq.Queue("default", connection=conn)], connection=conn).work(burst=True)
    assert sorted(c[1]["a"] for c in tasks.calls if c[0] == "add") == list(range(12))
    held = rq_backend.get(records[-1].id)
    assert held is not None and held.state is JobState.SCHEDULED and held.job_key == "k"
    rq_backend.close()
    target.close()


def test_memory_to_procrastinate_and_back(cutover_database_url: str) -> None:
    control = ControlPlane(cutover_database_url)
    control.init()
    memory_url = "memory://drain-roundtrip"
    memory = InMemoryBackend(memory_url)
    memory.flush()
    pg = adapters.open_backend(cutover_database_url)
    records = [registry.make_record(tasks.add, (i, i)) for i in range(9)]
    memory.enqueue(records)
    there = Drain(memory, memory_url, pg, cutover_database_url, control, registry,
                  DrainOptions(batch_size=4)).run()
    assert there.moved == 9 and list(memory.snapshot()) == []
    back = Drain(pg, cutover_database_url, memory, memory_url, control, registry,
                 DrainOptions(batch_size=4)).run()
    assert back.moved == 9 and list(pg.snapshot()) == []
    assert {r.id: r.digest() for r in memory.snapshot()} == {r.id: r.digest() for r in records}
    pg.close()
    control.close()


def test_include_failed_moves_failed_jobs_as_failed(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source = adapters.open_backend(rq_url)
    failed = registry.make_record(tasks.boom, ()).replace(state=JobState.FAILED, attempts=1,
                                                          error="ValueError: boom")
    source.put([failed])
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes", "--include-failed")
    assert code == 0 and report["moved"] == 1
    moved = adapters.open_backend(pg_url).get(failed.id)
    assert moved is not None and moved.state is JobState.FAILED
    assert moved.error == "ValueError: boom"
    assert invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)[0] == 0


def test_verify_names_lost_duplicated_and_mismatched_jobs(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source = adapters.open_backend(rq_url)
    records = [registry.make_record(tasks.add, (i, 2)) for i in range(6)]
    source.enqueue(records)
    assert invoke_json(rq_url, pg_url, "drain", "--yes")[0] == 0
    target = adapters.open_backend(pg_url)
    lost, dup, changed = records[0], records[1], records[2]
    target.remove([lost.id])
    source.put([dup])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE procrastinate_jobs SET args = '{\"a\": 99, \"b\": 2}' WHERE id = "
                     "(SELECT job_id FROM cutover_jobs WHERE cutover_id = %s)", (changed.id,))
    code, verdict = invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)
    assert code == 1
    assert [j["id"] for j in verdict["lost"]] == [lost.id]
    assert [j["id"] for j in verdict["duplicated"]] == [dup.id]
    assert [j["id"] for j in verdict["mismatched"]] == [changed.id]
    assert verdict["mismatched"][0]["fields"]["kwargs"] == {
        "ledger": {"a": 2, "b": 2}, "target": {"a": 99, "b": 2}}


def test_operator_can_pause_and_stop_a_running_drain(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source = adapters.open_backend(rq_url)
    source.enqueue([registry.make_record(tasks.add, (i, 0)) for i in range(60)])
    thread, outcome = slow_drain_in_thread(rq_url, pg_url)
    time.sleep(1.0)
    code, sent = invoke_json(rq_url, pg_url, "drain", "--signal", "pause")
    assert code == 0 and len(sent["runs"]) == 1
    time.sleep(0.8)
    paused_at = sum(per[JobState.QUEUED] for per in source.counts().values())
    time.sleep(1.0)
    assert sum(per[JobState.QUEUED] for per in source.counts().values()) == paused_at
    assert invoke_json(rq_url, pg_url, "drain", "--signal", "stop")[0] == 0
    thread.join(timeout=30)
    code, report = outcome["result"]
    assert code == 3 and report["stopped"] is True
    assert 0 < report["moved"] < 60
    # What is left is intact and a second run finishes it.
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes")
    assert code == 0
    assert invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)[0] == 0
    assert len(list(adapters.open_backend(pg_url).snapshot())) == 60


def test_signal_with_no_running_drain_is_an_error(urls: tuple[str, str]) -> None:
    result = invoke(*urls, "drain", "--signal", "stop")
    assert result.exit_code == 2 and "no drain is running" in result.output


def test_init_is_idempotent_and_validates_the_schema_name(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    code, doc = invoke_json(rq_url, pg_url, "init", "--yes")
    assert code == 0 and doc["created"] is False
    result = invoke(rq_url, pg_url, "init", "--yes")
    assert result.exit_code == 0
    os.environ["CUTOVER_SCHEMA"] = "bad-name;drop"
    try:
        result = invoke(rq_url, pg_url, "init", "--yes")
    finally:
        del os.environ["CUTOVER_SCHEMA"]
    assert result.exit_code == 2 and "not a valid schema name" in result.output


def test_init_from_many_processes_at_once(cutover_database_url: str) -> None:
    def one() -> None:  # each one its own control plane, as separate processes would be
        ControlPlane(cutover_database_url, schema="concurrent").init()

    assert errors_in_threads(one, 6) == []
    assert ControlPlane(cutover_database_url, schema="concurrent").initialized()


def test_mutating_commands_refuse_without_yes_when_nobody_can_answer(
        urls: tuple[str, str]) -> None:
    result = invoke(*urls, "drain")
    assert result.exit_code == 2 and "--yes" in result.output


def test_drain_without_a_control_schema_says_run_init(cutover_redis_url: str,
                                                      cutover_database_url: str) -> None:
    result = invoke(cutover_redis_url, cutover_database_url, "drain", "--yes")
    assert result.exit_code == 2 and "cutover init" in result.output


def test_several_workers_move_everything_in_order_both_ways(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    made = backlog(rq_url)
    conn = redis.Redis.from_url(rq_url)
    queue = rq.Queue("bulk", connection=conn)
    bulk = [queue.enqueue(tasks.add, i, 200).id for i in range(240)]
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    originals = {r.id: registry.normalize(r) for r in source.snapshot()}

    code, report = invoke_json(rq_url, pg_url, "drain", "--yes", "--batch-size", "7",
                               "--workers", "3")
    assert code == 3, report
    assert report["moved"] == 33 + 240
    # The same jobs are left in place, with the same classes, as by a single drain.
    assert {j["id"] for j in report["left"]["quarantined"]} == {"hostile"}
    assert {j["id"] for j in report["left"]["unknown_task"]} == {made["unknown"]}
    assert {j["id"] for j in report["left"]["in_place"]} == {made["deferred"], made["parent"]}
    assert report["running"] == [made["running"]]
    for job_id in bulk:
        moved = target.get(job_id)
        assert moved is not None and moved.digest() == originals[job_id].digest()
        assert source.get(job_id) is None
    # In step, window by window: a job never lands behind one read a few windows after it (each
    # worker's put stage may lag its reads by the pipeline's depth: 3 windows).
    native = [int(target.get(job_id).native_id or 0) for job_id in bulk]  # type: ignore[union-attr]
    round_ = 7 * 3 * 4
    assert all(native[i] < native[j] for i in range(len(bulk))
               for j in range(i + round_, len(bulk)))
    code, verdict = invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)
    assert code == 0 and verdict["verified"] == 33 + 240, verdict

    code, back = invoke_json(pg_url, rq_url, "drain", "--yes", "--batch-size", "5",
                             "--workers", "2")
    assert code == 0, back
    assert back["moved"] == 33 + 240
    for job_id in bulk:
        assert target.get(job_id) is None
        returned = source.get(job_id)
        assert returned is not None and returned.digest() == originals[job_id].digest()
    assert invoke_json(pg_url, rq_url, "verify", "--report", os.devnull)[0] == 0
    source.close()
    target.close()


def test_the_memory_backend_refuses_several_workers(cutover_database_url: str) -> None:
    assert invoke("memory://workers", cutover_database_url, "init", "--yes").exit_code == 0
    result = invoke("memory://workers", cutover_database_url, "drain", "--yes", "--workers",
                    "2")
    assert result.exit_code == 2
    assert "--workers 1" in result.output


def test_an_orphan_is_reported_by_audit_and_left_alone(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    conn = redis.Redis.from_url(rq_url)
    queue = rq.Queue("default", connection=conn)
    kept = [queue.enqueue(tasks.add, i, 1).id for i in range(3)]
    orphan = queue.enqueue(tasks.add, 9, 9).id
    conn.lrem("rq:queue:default", 0, orphan)  # status queued, in no list: RQ never runs it
    code, audit = invoke_json(rq_url, pg_url, "audit")
    assert code == 3
    assert audit["orphans"] == [orphan]
    assert audit["by_class"] == {"movable": 3, "in_place": 1}
    [entry] = audit["jobs"]["in_place"]
    assert entry["id"] == orphan and "orphaned" in entry["reason"]
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes")
    assert code == 0 and report["moved"] == 3, report
    target = adapters.open_backend(pg_url)
    assert all(target.get(job_id) is not None for job_id in kept)
    assert target.get(orphan) is None
    assert conn.hget(f"rq:job:{orphan}", "status") == b"queued"  # untouched
    target.close()


def test_a_failing_drain_worker_stops_the_drain_and_a_rerun_finishes(
        urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    rq_url, pg_url = urls
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    records = [registry.make_record(tasks.add, (i, 1)) for i in range(150)]
    source.enqueue(records)
    put_stage = Drain._put_stage

    def failing(self: Drain, batch: Any) -> Any:
        if self.partition == (1, 2) and self.report.moved >= 10:  # worker 1, a few batches in
            raise BackendError("the target broke (password=hunter2)")
        return put_stage(self, batch)

    monkeypatch.setattr(Drain, "_put_stage", failing)  # the forked workers inherit it
    control = ControlPlane(pg_url)
    drain = Drain(source, rq_url, target, pg_url, control, registry,
                  DrainOptions(batch_size=5, workers=2))
    with pytest.raises(BackendError, match="drain worker 1: the target broke") as failure:
        drain.run()
    assert "hunter2" not in str(failure.value)  # what crosses from a worker is redacted too
    monkeypatch.undo()
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes", "--workers", "2")
    assert code == 0, report
    for record in records:
        moved = target.get(record.id)
        assert moved is not None and moved.digest() == record.digest()
        assert source.get(record.id) is None
    assert invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)[0] == 0
    control.close()
    source.close()
    target.close()
