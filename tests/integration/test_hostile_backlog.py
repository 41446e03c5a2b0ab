"""Audit, `drain --dry-run` and the drain agree job by job on one hostile backlog, and a job the
target refuses costs only itself: isolated, given back, named (RQ <-> procrastinate, memory)."""

from __future__ import annotations

import os
import pickle
import zlib
from typing import Any

import pytest
import redis
import rq

from cutover import adapters
from cutover import audit as audit_module
from cutover.audit import Classifier, audit
from cutover.control import ControlPlane
from cutover.drain import Drain, DrainOptions
from cutover.errors import BackendError
from cutover.held import drain_owner
from cutover.record import JobRecord, JobState
from cutover.testing import tasks
from cutover.testing.tasks import registry
from tests.integration.drain_helpers import invoke_json, store_key

pytestmark = [pytest.mark.rq, pytest.mark.pg]

LONG_QUEUE = "q" * 200


def _raw_copy(conn: redis.Redis, job: rq.job.Job, new_id: str, before: str | None,
              fields: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> None:
    """Rewrite an enqueued job under another id (RQ itself refuses such ids), in its list."""
    h = conn.hgetall(f"rq:job:{job.id}")
    conn.delete(f"rq:job:{job.id}")
    conn.lrem(f"rq:queue:{job.origin}", 0, job.id)
    for field in drop:
        h.pop(field.encode(), None)
    conn.hset(f"rq:job:{new_id}", mapping={**h, **(fields or {})})
    if before is None:
        conn.rpush("rq:queue:default", new_id)
    else:
        conn.linsert("rq:queue:default", "BEFORE", before, new_id)


def hostile_backlog(rq_url: str) -> dict[str, Any]:
    """Ordinary jobs with every kind of trouble in between, the poison in mid-batch."""
    conn = redis.Redis.from_url(rq_url)
    queue = rq.Queue("default", connection=conn)
    b = adapters.open_backend(rq_url)
    made: dict[str, Any] = {"ordinary": [queue.enqueue(tasks.add, i, 1).id for i in range(12)]}
    mid = made["ordinary"][5]
    _raw_copy(conn, queue.enqueue(tasks.add, 50, 1), "poison\nnewline", mid)
    made["newline"] = "poison\nnewline"
    _raw_copy(conn, queue.enqueue(tasks.add, 51, 1), "no-status", mid, drop=("status",))
    made["no_status"] = "no-status"
    # An orphan whose origin is another queue, sitting in default's list: a worker of
    # `default` would run it; taking it by its origin would leave it there.
    stray = rq.Queue("elsewhere", connection=conn).enqueue(tasks.add, 52, 1)
    conn.lrem("rq:queue:elsewhere", 0, stray.id)
    conn.linsert("rq:queue:default", "BEFORE", mid, stray.id)
    made["misplaced"] = stray.id
    made["long_queue"] = rq.Queue(LONG_QUEUE, connection=conn).enqueue(tasks.add, 53, 1).id
    # Status queued, but in the scheduled registry: RQ's scheduler would still enqueue it.
    wrong_place = queue.enqueue(tasks.add, 54, 1)
    conn.lrem("rq:queue:default", 0, wrong_place.id)
    conn.zadd("rq:scheduled:default", {wrong_place.id: 1})
    made["queued_in_scheduled"] = wrong_place.id
    hostile = zlib.compress(pickle.dumps(("cutover.testing.tasks.add", None, (os.system,), {})))
    conn.hset("rq:job:hostile", mapping={"status": "queued", "origin": "default",
                                         "data": hostile})
    conn.linsert("rq:queue:default", "BEFORE", mid, "hostile")
    made["unknown"] = queue.enqueue("somewhere.else.task", 1).id
    running = queue.enqueue(tasks.add, 0, 0)
    assert b.claim(None, "busy-worker", lambda r: None if r.id == running.id else "x")
    made["running"] = running.id
    failed = registry.make_record(tasks.boom, ()).replace(state=JobState.FAILED, attempts=1,
                                                          error="ValueError: boom")
    b.put([failed])
    made["failed"] = failed.id
    # A dependency group: it resolves on RQ (parent in place, dependent deferred in place).
    parent = queue.enqueue(tasks.add, 60, 1)
    made["dep_parent"] = parent.id
    made["dep_child"] = queue.enqueue(tasks.add, 61, 1, depends_on=parent).id
    b.close()
    return made


EXPECTED = {"newline": "unsupported", "no_status": "quarantined", "misplaced": "in_place",
            "queued_in_scheduled": "in_place",
            "long_queue": "unsupported", "hostile_id": "quarantined", "unknown": "unknown_task",
            "running": "in_place", "failed": "failed", "dep_parent": "in_place",
            "dep_child": "in_place"}


def _moves(cls: str) -> str:
    return "moves" if cls in ("movable", "lossy") else cls


def test_audit_dry_run_and_drain_agree_job_by_job(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    made = hostile_backlog(rq_url)
    made["hostile_id"] = "hostile"
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    before = {r.id for r in source.snapshot()}
    classifier = Classifier(registry, target, owner=drain_owner(store_key(pg_url)))
    audited = audit(source, classifier, every_job=True).verdicts
    expected = {made[k]: cls for k, cls in EXPECTED.items()}
    expected.update(dict.fromkeys(made["ordinary"], "movable"))
    assert audited == expected

    control = ControlPlane(pg_url)
    plan = Drain(source, rq_url, target, pg_url, control, registry,
                 DrainOptions(batch_size=4, dry_run=True)).plan(every_job=True)
    # The drain reads waiting and failed jobs (the running one is counted, not read).
    assert plan.verdicts == {i: c for i, c in expected.items() if i != made["running"]}
    assert plan.by_class["running"] == 1

    code, audit_doc = invoke_json(rq_url, pg_url, "audit")
    assert code == 3 and audit_doc["left_behind"] == {"unsupported": 2, "quarantined": 2,
                                                      "in_place": 5, "unknown_task": 1,
                                                      "failed": 1}
    code, dry = invoke_json(rq_url, pg_url, "drain", "--dry-run", "--batch-size", "4")
    assert code == 0 and {j["id"] for js in dry["jobs"].values() for j in js} == \
        {i for i, c in expected.items() if c != "movable" and i != made["running"]}

    for attempt, workers in enumerate(("1", "2")):  # the re-run says the same, moves no more
        code, report = invoke_json(rq_url, pg_url, "drain", "--yes", "--batch-size", "4",
                                   "--workers", workers)
        assert code == 3, report
        drained = {j["id"]: cls for cls, jobs in report["left"].items() for j in jobs}
        drained.update(dict.fromkeys(report["running"], "in_place"))
        on_target = {r.id for r in target.snapshot()}
        drained.update(dict.fromkeys(on_target, "movable"))
        assert {i: _moves(c) for i, c in drained.items()} == \
            {i: _moves(c) for i, c in expected.items()}, attempt
        assert report["moved"] == (12 if attempt == 0 else 0)
        assert on_target == set(made["ordinary"])
        # Nothing lost, nothing held: every other job is where it was, runnable as before.
        assert {r.id for r in source.snapshot()} | on_target == before
        for backend in (source, target):
            assert sum(per[JobState.HELD] for per in backend.counts().values()) == 0
        conn = redis.Redis.from_url(rq_url)
        assert conn.keys("cutover:held:*") == []
        assert conn.lpos("rq:queue:default", "poison\nnewline") is not None
        assert conn.lpos(f"rq:queue:{LONG_QUEUE}", made["long_queue"]) is not None
        assert conn.lpos("rq:queue:default", made["misplaced"]) is not None
        assert conn.zscore("rq:scheduled:default", made["queued_in_scheduled"]) == 1
    code, verdict = invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)
    assert code == 0 and verdict["verified"] == 12 and verdict["stuck"] == []
    control.close()
    source.close()
    target.close()


def _blind(backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter (and the ledger's check) forget a limit: the put is the first to find it."""
    # On the class: drain worker processes open their own backends.
    monkeypatch.setattr(type(backend), "cannot_hold", lambda self, record: [])
    monkeypatch.setattr(audit_module, "ledger_limits", lambda record: [])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_poison_job_the_limits_missed_costs_only_itself_rq_to_procrastinate(
        urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    rq_url, pg_url = urls
    conn = redis.Redis.from_url(rq_url)
    queue = rq.Queue("default", connection=conn)
    ids = [queue.enqueue(tasks.add, i, 1).id for i in range(12)]
    poison = "poison\nnewline"  # in the middle of the one batch (20 > 13 jobs)
    _raw_copy(conn, queue.enqueue(tasks.add, 50, 1), poison, ids[5])
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    _blind(target, monkeypatch)
    control = ControlPlane(pg_url)
    drain = Drain(source, rq_url, target, pg_url, control, registry,
                  DrainOptions(batch_size=20, workers=workers))
    report = drain.run(install_signal_handlers=False)
    assert report.moved == 12
    assert [j["id"] for j in report.left["unsupported"]] == [poison]
    assert "the target refused it" in report.left["unsupported"][0]["reason"]
    assert {r.id for r in target.snapshot()} == set(ids)
    back = source.get(poison)
    assert back is not None and back.state is JobState.QUEUED
    assert conn.lrange("rq:queue:default", 0, -1) == [poison.encode()]
    assert conn.keys("cutover:held:*") == []
    with control.tx("reading failures") as c:
        rows = c.execute("SELECT cutover_id, class, run_id FROM cutover.failures").fetchall()
    assert rows == [(poison, "unsupported", report.run_id)]
    # The re-run tries it again (the operator may have fixed the target) and says the same.
    again = Drain(source, rq_url, target, pg_url, control, registry,
                  DrainOptions(batch_size=20)).run(install_signal_handlers=False)
    assert again.moved == 0 and [j["id"] for j in again.left["unsupported"]] == [poison]
    assert conn.keys("cutover:held:*") == []
    control.close()
    source.close()
    target.close()


def test_a_poison_job_the_limits_missed_costs_only_itself_procrastinate_to_rq(
        urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The other way the ledger cannot share the put's transaction: the poison's intent row
    must go, or every later run would try to finish a move that never happened."""
    rq_url, pg_url = urls
    pg = adapters.open_backend(pg_url)
    records = [registry.make_record(tasks.add, (i, 1)) for i in range(9)]
    poison = records[4].replace(max_attempts=3, retry_intervals=(-5.0,))  # RQ's Retry refuses
    records[4] = poison
    pg.put(records)
    rq_backend = adapters.open_backend(rq_url)
    _blind(rq_backend, monkeypatch)
    control = ControlPlane(pg_url)
    report = Drain(pg, pg_url, rq_backend, rq_url, control, registry,
                   DrainOptions(batch_size=4)).run(install_signal_handlers=False)
    assert report.moved == 8 and [j["id"] for j in report.left["unsupported"]] == [poison.id]
    back = pg.get(poison.id)
    assert back is not None and back.state is JobState.QUEUED and back.holder is None
    assert {r.id for r in rq_backend.snapshot()} == {r.id for r in records} - {poison.id}
    assert control.unfinished(store_key(pg_url), store_key(rq_url)) == []
    code, verdict = invoke_json(pg_url, rq_url, "verify", "--report", os.devnull)
    assert code == 0 and verdict["verified"] == 8, verdict
    control.close()
    pg.close()
    rq_backend.close()


def test_memory_source_poison_job_is_unsupported_up_front_and_isolated_when_missed(
        cutover_redis_url: str, cutover_database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    source = adapters.open_backend("memory://")
    ordinary = [registry.make_record(tasks.add, (i, 1)) for i in range(6)]
    colon = JobRecord(id="has:colon", task="cutover.testing.tasks.add", kwargs={"a": 1, "b": 2})
    source.enqueue([*ordinary[:3], colon, *ordinary[3:]])
    target = adapters.open_backend(cutover_redis_url)
    control = ControlPlane(cutover_database_url)
    control.init()
    plan = Drain(source, "memory://", target, cutover_redis_url, control, registry,
                 DrainOptions(batch_size=10, dry_run=True)).plan(every_job=True)
    assert plan.verdicts[colon.id] == "unsupported"
    assert "RQ refuses it" in plan.details["unsupported"][0]["reason"]
    _blind(target, monkeypatch)  # and if RQ's validator were not known to the adapter:
    report = Drain(source, "memory://", target, cutover_redis_url, control, registry,
                   DrainOptions(batch_size=10)).run(install_signal_handlers=False)
    assert report.moved == 6 and [j["id"] for j in report.left["unsupported"]] == [colon.id]
    left = source.get(colon.id)
    assert left is not None and left.state is JobState.QUEUED
    assert {r.id for r in target.snapshot()} == {r.id for r in ordinary}
    control.close()
    target.close()


def test_jobs_an_older_run_held_and_this_one_leaves_are_given_back(
        urls: tuple[str, str]) -> None:
    """What the defect left behind: a poison job (and its batch) held for the pair by runs
    that failed on it. The next drain moves the batch and gives the poison back."""
    rq_url, pg_url = urls
    conn = redis.Redis.from_url(rq_url)
    queue = rq.Queue("default", connection=conn)
    ids = [queue.enqueue(tasks.add, i, 1).id for i in range(4)]
    _raw_copy(conn, queue.enqueue(tasks.add, 50, 1), "poison\nnewline", ids[2])
    source = adapters.open_backend(rq_url)
    owner = drain_owner(store_key(pg_url))
    assert len(source.take([*ids, "poison\nnewline"], owner).taken_ids) == 5
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes")
    assert code == 3 and report["moved"] == 4, report
    assert [j["id"] for j in report["left"]["unsupported"]] == ["poison\nnewline"]
    assert conn.keys("cutover:held:*") == []
    assert conn.lrange("rq:queue:default", 0, -1) == [b"poison\nnewline"]
    back = source.get("poison\nnewline")
    assert back is not None and back.state is JobState.QUEUED
    source.close()


def test_a_target_that_refuses_every_job_stops_the_drain_with_nothing_held(
        urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only or rights-less store is not a poison job: the first batch refused whole,
    for one reason, stops the run (exit 2), its jobs given back, rather than trying the whole
    source job by job."""
    rq_url, pg_url = urls
    conn = redis.Redis.from_url(rq_url)
    queue = rq.Queue("default", connection=conn)
    ids = [queue.enqueue(tasks.add, i, 1).id for i in range(10)]
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)

    def refuse(records: Any, **kwargs: Any) -> list[str]:
        raise BackendError("permission denied for table procrastinate_jobs")

    monkeypatch.setattr(target, "put", refuse)
    control = ControlPlane(pg_url)
    drain = Drain(source, rq_url, target, pg_url, control, registry, DrainOptions(batch_size=4))
    with pytest.raises(BackendError, match="refused all 4 jobs of a batch for one reason"):
        drain.run(install_signal_handlers=False)
    with control.tx("reading failures") as c:
        assert c.execute("SELECT count(*) FROM cutover.failures").fetchone() == (4,)
    # The refused batch is back in its list; batches the reader had taken meanwhile stay held
    # for the pair, and the next run (the store fixed) moves them all.
    queued = {i.decode() for i in conn.lrange("rq:queue:default", 0, -1)}
    assert set(ids[:4]) <= queued
    monkeypatch.undo()
    again = Drain(source, rq_url, target, pg_url, control, registry,
                  DrainOptions(batch_size=4)).run(install_signal_handlers=False)
    assert again.moved == 10 and again.left == {}
    assert {r.id for r in target.snapshot()} == set(ids)
    assert conn.keys("cutover:held:*") == []
    control.close()
    source.close()
    target.close()


def test_back_to_rq_jobs_rq_cannot_hold_stay_on_procrastinate_runnable(
        urls: tuple[str, str]) -> None:
    """The way back: a job moved in from elsewhere keeps an id RQ 3 refuses; before, the put
    failed (exit 2) and the batch stayed held on procrastinate for ever."""
    rq_url, pg_url = urls
    pg = adapters.open_backend(pg_url)
    records = [registry.make_record(tasks.add, (i, 1)) for i in range(5)]
    dotted = registry.make_record(tasks.add, (9, 9)).replace(id="from.elsewhere")
    pg.put([*records[:2], dotted, *records[2:]])
    code, plan = invoke_json(pg_url, rq_url, "drain", "--dry-run", "--batch-size", "3")
    assert code == 0 and [j["id"] for j in plan["jobs"]["unsupported"]] == [dotted.id]
    code, report = invoke_json(pg_url, rq_url, "drain", "--yes", "--batch-size", "3")
    assert code == 3 and report["moved"] == 5, report
    assert [j["id"] for j in report["left"]["unsupported"]] == [dotted.id]
    assert "RQ refuses it" in report["left"]["unsupported"][0]["reason"]
    left = pg.get(dotted.id)
    assert left is not None and left.state is JobState.QUEUED and left.holder is None
    assert [r.id for r in pg.snapshot()] == [dotted.id]
    pg.close()


def test_rq_limits_are_rqs_own(cutover_redis_url: str) -> None:
    backend = adapters.open_backend(cutover_redis_url)
    base = registry.make_record(tasks.add, (1, 2))

    def rq_(**change: Any) -> list[str]:
        return backend.cannot_hold(base.replace(**change))

    assert rq_() == [] and rq_(id="abc_DEF-123") == []
    for bad in ("a:b", "a.b", "a b", "", "a\nb"):
        assert rq_(id=bad) and "RQ refuses it" in rq_(id=bad)[0], bad
    assert rq_(queue="q" * 500) == [] and rq_(queue="") == ["queue name is empty"]
    assert rq_(priority=2**40) == []  # kept in a hash field, not an integer column
    assert rq_(max_attempts=3, retry_intervals=(-1.0,)) != []
    assert rq_(max_attempts=3, retry_intervals=(float("inf"),)) != []
    backend.close()
