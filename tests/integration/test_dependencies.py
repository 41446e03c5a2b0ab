"""RQ dependencies (depends_on) keep their meaning in the cutover worker, beside RQ's own worker,
and across drains RQ <-> Procrastinate: every job runs exactly once, and only after all its
parents succeeded. Executions are counted from the tasks' own record (a PostgreSQL table the task
writes, `cutover.testing.tasks.mark`), never from logs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import procrastinate
import psycopg
import pytest
import redis
import rq
from cutover_rq.backend import RQBackend

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.control import ControlPlane
from cutover.dependencies import DependencyView
from cutover.drain import Drain, DrainOptions
from cutover.record import JobState
from cutover.testing import tasks
from cutover.testing.tasks import registry
from cutover.worker import Worker
from tests.integration.drain_helpers import invoke, invoke_json, run_cli

pytestmark = [pytest.mark.rq, pytest.mark.pg]


# -- set-up ----------------------------------------------------------------------------------
@pytest.fixture
def dsn(cutover_database_url: str) -> str:
    """The PostgreSQL database of the test; it also holds the tasks' record of executions."""
    tasks.reset()
    with psycopg.connect(cutover_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE cutover_runs (seq serial PRIMARY KEY, name text NOT NULL)")
    return cutover_database_url


@pytest.fixture
def conn(cutover_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(cutover_redis_url)
    yield client
    client.close()


@pytest.fixture
def source(cutover_redis_url: str) -> Iterator[RQBackend]:
    backend = RQBackend(cutover_redis_url)
    yield backend
    backend.close()


@pytest.fixture
def target(dsn: str) -> Iterator[QueueBackend]:
    backend = adapters.open_backend(dsn)
    yield backend
    backend.close()


@pytest.fixture
def rq_url(cutover_redis_url: str, dsn: str) -> str:
    """The RQ side of a pair whose control plane is initialized."""
    assert invoke(cutover_redis_url, dsn, "init", "--yes").exit_code == 0
    return cutover_redis_url


def executions(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM cutover_runs ORDER BY seq")]


def assert_ran_once_in_order(dsn: str, names: set[str],
                             edges: list[tuple[str, str]]) -> list[str]:
    """Each of ``names`` ran exactly once (and nothing else ran), every parent before its
    child."""
    runs = executions(dsn)
    assert sorted(runs) == sorted(names), runs
    for parent, child in edges:
        assert runs.index(parent) < runs.index(child), (parent, child, runs)
    return runs


def enqueue(conn: redis.Redis, dsn: str, name: str, *, queue: str = "default",
            depends_on: Any = None, fail: bool = False) -> rq.job.Job:
    """A job of `mark` enqueued by plain RQ, with its name as id; it records itself as
    ``NAME!early`` if one of its parents had not run to the end when it started."""
    options: dict[str, Any] = {"job_id": name}
    after: list[str] = []
    if depends_on is not None:
        options["depends_on"] = depends_on
        parents = depends_on.dependencies if isinstance(depends_on, rq.job.Dependency) \
            else depends_on if isinstance(depends_on, list) else [depends_on]
        after = [p if isinstance(p, str) else p.id for p in parents]
    return rq.Queue(queue, connection=conn).enqueue(tasks.mark, dsn, name, fail, after=after,
                                                    **options)


def status(conn: redis.Redis, job_id: str) -> str | None:
    raw = conn.hget(f"rq:job:{job_id}", "status")
    return raw.decode() if isinstance(raw, bytes) else None


def cutover_worker(backend: QueueBackend, queues: list[str] | None = None) -> None:
    Worker(backend, registry, queues=queues, burst=True,
           poll_interval=0.05).run(install_signal_handlers=False)


def native_rq_worker(conn: redis.Redis, queues: list[str], max_jobs: int | None = None) -> None:
    rq.SimpleWorker([rq.Queue(q, connection=conn) for q in queues],
                    connection=conn).work(burst=True, max_jobs=max_jobs)


def native_procrastinate_worker(dsn: str) -> None:
    """Procrastinate's own worker, the task registered under RQ's name for it."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="cutover.testing.tasks.mark")
    def mark(dsn: str, name: str, fail: bool = False, after: list[str] | None = None) -> str:
        return tasks.mark(dsn, name, fail, after)

    async def work() -> None:
        async with app.open_async():
            await app.run_worker_async(wait=False, install_signal_handlers=False,
                                       listen_notify=False)

    asyncio.run(work())


def left(report: dict[str, Any], cls: str = "in_place") -> dict[str, str]:
    return {j["id"]: j["reason"] for j in report.get("left", {}).get(cls, [])}


def audited(doc: dict[str, Any], cls: str = "in_place") -> dict[str, str]:
    return {j["id"]: j["reason"] for j in doc.get("jobs", {}).get(cls, [])}


# -- the cutover worker on RQ, and RQ's own worker -----------------------------------------------
def test_cutover_worker_queues_dependents_once_all_parents_succeeded(
        dsn: str, conn: redis.Redis, source: RQBackend) -> None:
    a = enqueue(conn, dsn, "a")
    b = enqueue(conn, dsn, "b", depends_on=a)
    enqueue(conn, dsn, "c", depends_on=b)
    d = enqueue(conn, dsn, "d", queue="second")  # worked after every job of "default"
    enqueue(conn, dsn, "e", depends_on=[a, d])
    assert {status(conn, i) for i in "bce"} == {"deferred"}

    cutover_worker(source)

    assert_ran_once_in_order(dsn, set("abcde"),
                             [("a", "b"), ("b", "c"), ("a", "e"), ("d", "e")])
    assert {status(conn, i) for i in "abcde"} == {"finished"}
    assert conn.zcard("rq:deferred:default") == 0
    assert not conn.exists("rq:job:a:dependents", "rq:job:b:dependents", "rq:job:d:dependents")


def test_dependent_enqueued_at_front_goes_to_the_head_of_its_queue(
        dsn: str, conn: redis.Redis, source: RQBackend) -> None:
    a = enqueue(conn, dsn, "a", queue="parents")
    enqueue(conn, dsn, "filler")
    enqueue(conn, dsn, "urgent", depends_on=rq.job.Dependency(jobs=[a], enqueue_at_front=True))
    enqueue(conn, dsn, "late", depends_on=a)

    cutover_worker(source, queues=["parents"])

    assert conn.lrange("rq:queue:default", 0, -1) == [b"urgent", b"filler", b"late"]


def test_cutover_and_native_rq_workers_release_each_others_dependents(
        dsn: str, conn: redis.Redis, source: RQBackend) -> None:
    a = enqueue(conn, dsn, "a", queue="cut")            # run by the cutover worker
    b = enqueue(conn, dsn, "b", depends_on=a)           # by RQ's worker
    enqueue(conn, dsn, "c", depends_on=b)               # by RQ's worker
    d = enqueue(conn, dsn, "d")                         # by RQ's worker
    enqueue(conn, dsn, "e", queue="cut", depends_on=[a, d])  # by the cutover worker

    cutover_worker(source, queues=["cut"])
    assert executions(dsn) == ["a"] and status(conn, "e") == "deferred"
    native_rq_worker(conn, ["default"])
    assert status(conn, "e") == "queued"
    cutover_worker(source, queues=["cut"])

    assert_ran_once_in_order(dsn, set("abcde"),
                             [("a", "b"), ("b", "c"), ("a", "e"), ("d", "e")])


@pytest.mark.parametrize("worker", ["cutover", "native"])
def test_a_failed_parent_keeps_its_dependent_deferred_unless_failures_are_allowed(
        worker: str, dsn: str, conn: redis.Redis, source: RQBackend,
        cutover_redis_url: str) -> None:
    a = enqueue(conn, dsn, "a", fail=True)
    enqueue(conn, dsn, "b", depends_on=a)
    enqueue(conn, dsn, "tolerant", depends_on=rq.job.Dependency(jobs=[a], allow_failure=True))

    if worker == "cutover":
        cutover_worker(source)
    else:
        native_rq_worker(conn, ["default"])

    assert_ran_once_in_order(dsn, {"a", "tolerant"}, [("a", "tolerant")])
    assert status(conn, "a") == "failed" and status(conn, "b") == "deferred"
    code, doc = invoke_json(cutover_redis_url, dsn, "audit")
    assert code == 3
    reasons = audited(doc)
    assert "a (failed on rq)" in reasons["b"]
    assert "deferred job(s) b wait on it" in reasons["a"]


def test_a_parent_whose_worker_died_with_its_budget_spent_follows_the_failure_rules(
        dsn: str, conn: redis.Redis, source: RQBackend) -> None:
    """Recovered as failed for good (issue 9): dependents go as after any failure."""
    a = enqueue(conn, dsn, "a")
    enqueue(conn, dsn, "b", depends_on=a)
    enqueue(conn, dsn, "tolerant", depends_on=rq.job.Dependency(jobs=[a], allow_failure=True))
    claimed = source.claim(None, "dead-worker", lambda r: None)  # then its worker dies
    assert claimed is not None and claimed.id == "a"

    assert "a" in source.recover_stalled(60)
    assert status(conn, "a") == "failed" and status(conn, "b") == "deferred"
    assert status(conn, "tolerant") == "queued"
    cutover_worker(source)
    # a never ran again (nor to its end: "!early"); b waits on its failed parent.
    assert executions(dsn) == ["tolerant!early"]
    assert status(conn, "b") == "deferred"


def strand(conn: redis.Redis, dsn: str) -> None:
    """a finished, b still deferred on it: what a cutover worker killed between finishing a
    parent and queueing its dependents (or an older cutover worker) leaves."""
    a = enqueue(conn, dsn, "a")
    enqueue(conn, dsn, "b", depends_on=a)
    native_rq_worker(conn, ["default"], max_jobs=1)
    assert status(conn, "b") == "queued"
    conn.lrem("rq:queue:default", 0, "b")
    conn.hset("rq:job:b", "status", "deferred")
    conn.zadd("rq:deferred:default", {"b": 0})


def test_the_cutover_worker_recovers_dependents_nobody_queued(
        dsn: str, conn: redis.Redis, source: RQBackend) -> None:
    strand(conn, dsn)

    cutover_worker(source)

    assert_ran_once_in_order(dsn, {"a", "b"}, [("a", "b")])


# -- drains -----------------------------------------------------------------------------------
def test_drain_keeps_dependency_groups_whole_and_moves_dependents_once_released(
        dsn: str, conn: redis.Redis, rq_url: str, source: RQBackend,
        target: QueueBackend) -> None:
    a = enqueue(conn, dsn, "a")
    b = enqueue(conn, dsn, "b", depends_on=a)
    enqueue(conn, dsn, "c", depends_on=b)
    d = enqueue(conn, dsn, "d")
    enqueue(conn, dsn, "e", depends_on=[a, d])
    enqueue(conn, dsn, "loner")
    group = set("abcde")

    # Audit, dry-run and drain: the same jobs, the same class, before anything ran.
    code, doc = invoke_json(rq_url, dsn, "audit")
    assert code == 3 and set(audited(doc)) == group
    assert doc["by_class"] == {"in_place": 5, "movable": 1}
    code, plan = invoke_json(rq_url, dsn, "drain", "--dry-run")
    assert plan["plan"] == {"in_place": 5, "movable": 1}
    code, report = invoke_json(rq_url, dsn, "drain", "--yes")
    assert code == 3 and report["moved"] == 1
    assert left(report) == audited(doc)
    assert "deferred job(s) b, e wait on it" in left(report)["a"]
    assert "waits on a (queued on rq), d (queued on rq)" in left(report)["e"]
    refused = source.take(["a"], "someone-else").refused
    assert refused["a"] in ("deferred job b waits on it", "deferred job e waits on it")

    # RQ's worker runs the two parents; b and e are queued; e has no dependents and moves.
    native_rq_worker(conn, ["default"], max_jobs=2)
    assert executions(dsn) == ["a", "d"]
    code, report = invoke_json(rq_url, dsn, "drain", "--yes")
    assert code == 3 and report["moved"] == 1, report
    assert set(left(report)) == {"b", "c"}
    moved = target.get("e")
    assert moved is not None and moved.state is JobState.QUEUED
    cutover_worker(target)  # runs loner and e on Procrastinate

    # b runs on RQ, which queues c; c moves and Procrastinate's own worker runs it.
    native_rq_worker(conn, ["default"], max_jobs=1)
    code, report = invoke_json(rq_url, dsn, "drain", "--yes")
    assert code == 0 and report["moved"] == 1, report
    native_procrastinate_worker(dsn)

    assert_ran_once_in_order(dsn, group | {"loner"},
                             [("a", "b"), ("b", "c"), ("a", "e"), ("d", "e")])
    code, verdict = invoke_json(rq_url, dsn, "verify", "--report", "/dev/null")
    assert code == 0 and verdict["clean"], verdict
    code, doc = invoke_json(rq_url, dsn, "audit")
    assert code == 0 and not doc["left_behind"], doc


def test_a_dependent_enqueued_while_the_drain_reads_keeps_its_parent_on_rq(
        dsn: str, conn: redis.Redis, rq_url: str, source: RQBackend, target: QueueBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain read the dependency facts before b existed; b is enqueued (deferred on a)
    before the drain takes a: the take refuses a, the drain says why, and the group resolves on
    RQ as usual."""
    a = enqueue(conn, dsn, "a")
    read = DependencyView.read

    def read_then_enqueue(*args: Any, **kwargs: Any) -> DependencyView:
        view = read(*args, **kwargs)
        if not conn.exists("rq:job:b"):
            enqueue(conn, dsn, "b", depends_on=a)
        return view

    monkeypatch.setattr(DependencyView, "read", read_then_enqueue)
    control = ControlPlane(dsn)
    report = Drain(source, rq_url, target, dsn, control, registry, DrainOptions()).run(
        install_signal_handlers=False)
    control.close()
    monkeypatch.undo()

    assert report.moved == 0
    reasons = {j["id"]: j["reason"] for j in report.left["in_place"]}
    assert reasons["a"] == "not taken: deferred job b waits on it"
    assert "b" in reasons and target.get("a") is None
    native_rq_worker(conn, ["default"])
    assert_ran_once_in_order(dsn, {"a", "b"}, [("a", "b")])


def split(source: RQBackend, target: QueueBackend, conn: redis.Redis, job_id: str, *,
          forget: bool) -> None:
    """Move one parent (held by "old-version") the way an older version did, leaving its
    dependents deferred on RQ (and, with ``forget``, deleting its dependents set as its remove
    did)."""
    taken = source.take([job_id], "old-version")
    assert taken.taken_ids == [job_id], taken.refused
    record = registry.normalize(taken.taken[0])
    target.put([record.replace(state=JobState.QUEUED)])
    source.remove([job_id])
    if forget:
        conn.delete(f"rq:job:{job_id}:dependents")


def test_groups_an_older_version_split_resolve_once_the_moved_parent_succeeded(
        dsn: str, conn: redis.Redis, rq_url: str, source: RQBackend,
        target: QueueBackend) -> None:
    # The dependents are enqueued once the parent is held (the take guard would refuse it
    # otherwise; the older version had none).
    a = enqueue(conn, dsn, "a")
    enqueue(conn, dsn, "d")
    source.take(["a"], "old-version")
    enqueue(conn, dsn, "b", depends_on=a)
    enqueue(conn, dsn, "e", depends_on=["a", "d"])
    split(source, target, conn, "a", forget=True)
    assert status(conn, "b") == "deferred" and status(conn, "e") == "deferred"

    code, doc = invoke_json(rq_url, dsn, "audit")
    assert code == 3
    assert "waits on a (queued on procrastinate)" in audited(doc)["b"]
    code, report = invoke_json(rq_url, dsn, "drain", "--yes")
    assert code == 3 and report["moved"] == 0, report
    assert left(report) == audited(doc)
    # The drain told RQ again that b and e wait on a (the older version had forgotten): the
    # cutover worker finishing d must not take a's absence for "finished".
    assert {m.decode() for m in conn.smembers("rq:job:a:dependents")} == {"b", "e"}
    cutover_worker(source)
    assert executions(dsn) == ["d"] and status(conn, "e") == "deferred"

    cutover_worker(target)  # a succeeds on Procrastinate
    code, report = invoke_json(rq_url, dsn, "drain", "--yes")
    assert code == 0 and report["moved"] == 2, report
    cutover_worker(target)

    assert_ran_once_in_order(dsn, {"a", "b", "d", "e"}, [("a", "b"), ("a", "e"), ("d", "e")])
    assert not conn.exists("rq:job:a:dependents")


def test_a_parent_moved_back_still_releases_its_dependents(
        dsn: str, conn: redis.Redis, rq_url: str, source: RQBackend,
        target: QueueBackend) -> None:
    a = enqueue(conn, dsn, "a")
    source.take(["a"], "old-version")
    enqueue(conn, dsn, "b", depends_on=a)
    split(source, target, conn, "a", forget=False)
    # remove kept the dependents set b needs
    assert {m.decode() for m in conn.smembers("rq:job:a:dependents")} == {"b"}

    code, report = invoke_json(dsn, rq_url, "drain", "--yes")  # back to RQ
    assert code == 0 and report["moved"] == 1, report
    assert status(conn, "a") == "queued"
    native_rq_worker(conn, ["default"])

    assert_ran_once_in_order(dsn, {"a", "b"}, [("a", "b")])


def test_remove_keeps_a_dependents_set_only_while_a_deferred_job_needs_it(
        dsn: str, conn: redis.Redis, source: RQBackend) -> None:
    a = enqueue(conn, dsn, "a")
    enqueue(conn, dsn, "b", depends_on=a)
    x = enqueue(conn, dsn, "x")
    enqueue(conn, dsn, "y", depends_on=x)
    conn.hset("rq:job:y", "status", "canceled")  # nobody waits on x any more

    assert source.remove(["a", "x"]) == 2
    assert conn.exists("rq:job:a:dependents") and not conn.exists("rq:job:x:dependents")
    assert source.remove(["b"]) == 1
    assert not conn.exists("rq:job:a:dependents")  # b's removal took it out of a's set


def test_parent_states_come_from_the_hashes_and_a_statusless_parent_is_not_done(
        dsn: str, conn: redis.Redis, source: RQBackend, cutover_redis_url: str) -> None:
    a = enqueue(conn, dsn, "a")
    enqueue(conn, dsn, "b", depends_on=a)
    finished = enqueue(conn, dsn, "f")
    conn.hset(f"rq:job:{finished.id}", "status", "finished")
    conn.hdel("rq:job:a", "status")
    assert source.dependency_states(["a", "f", "gone"]) == {"a": JobState.QUEUED,
                                                           "f": JobState.FINISHED}
    code, doc = invoke_json(cutover_redis_url, dsn, "audit")
    assert code == 3 and "waits on a (queued on rq)" in audited(doc)["b"]


def test_verify_names_dependents_nothing_will_queue_until_a_drain_moves_them(
        dsn: str, conn: redis.Redis, rq_url: str, target: QueueBackend) -> None:
    enqueue(conn, dsn, "loner")
    assert invoke_json(rq_url, dsn, "drain", "--yes")[0] == 0  # the pair has a history
    strand(conn, dsn)

    code, verdict = invoke_json(rq_url, dsn, "verify", "--report", "/dev/null")
    assert code == 3 and not verdict["clean"], verdict
    assert [(j["id"], j["parents"]) for j in verdict["stranded"]] == [("b", "a (finished on rq)")]
    code, report = invoke_json(rq_url, dsn, "drain", "--yes")
    assert code == 0 and report["moved"] == 1, report
    code, verdict = invoke_json(rq_url, dsn, "verify", "--report", "/dev/null")
    assert code == 0 and verdict["stranded"] == [], verdict
    cutover_worker(target)
    assert_ran_once_in_order(dsn, {"loner", "a", "b"}, [("a", "b")])


def test_a_parent_that_will_retry_releases_nothing_until_it_fails_for_good(
        dsn: str, conn: redis.Redis, source: RQBackend) -> None:
    a = rq.Queue("default", connection=conn).enqueue(
        tasks.mark, dsn, "a", True, job_id="a", retry=rq.Retry(max=1, interval=1))
    enqueue(conn, dsn, "tolerant", depends_on=rq.job.Dependency(jobs=[a], allow_failure=True))

    cutover_worker(source)  # the first attempt fails; the retry is due in a second
    assert executions(dsn) == ["a"] and status(conn, "tolerant") == "deferred"
    time.sleep(1.2)
    cutover_worker(source)  # fails for good: a dependent that allows failures goes

    assert executions(dsn) == ["a", "a", "tolerant"]


def test_the_worker_command_runs_chains_and_fan_in_once_in_order_with_two_threads(
        dsn: str, conn: redis.Redis, cutover_redis_url: str) -> None:
    """The real command, in its own process, tasks in child processes (its default)."""
    a = enqueue(conn, dsn, "a")
    b = enqueue(conn, dsn, "b", depends_on=a)
    c = enqueue(conn, dsn, "c", depends_on=b)
    d = enqueue(conn, dsn, "d")
    enqueue(conn, dsn, "e", depends_on=[a, d])
    enqueue(conn, dsn, "f", depends_on=[c, "e"])

    done = run_cli(cutover_redis_url, dsn, "worker", "--backend", "source", "--burst",
                   "--concurrency", "2")

    assert done.returncode == 0, done.stderr
    assert_ran_once_in_order(dsn, set("abcdef"), [("a", "b"), ("b", "c"), ("a", "e"),
                                                  ("d", "e"), ("c", "f"), ("e", "f")])


def chain_split_by_an_older_version(dsn: str, conn: redis.Redis, source: RQBackend,
                                    target: QueueBackend) -> None:
    """a -> b -> c on RQ; a moved to Procrastinate by an older version, and run there."""
    a = enqueue(conn, dsn, "a")
    source.take(["a"], "old-version")
    b = enqueue(conn, dsn, "b", depends_on=a)
    enqueue(conn, dsn, "c", depends_on=b)
    split(source, target, conn, "a", forget=True)
    cutover_worker(target)


def test_a_done_dependent_that_others_wait_on_is_queued_on_rq_by_the_drain(
        dsn: str, conn: redis.Redis, rq_url: str, source: RQBackend,
        target: QueueBackend) -> None:
    """b's parents are done but c waits on b, so the drain queues b on RQ, where it runs and
    releases c, which the next drain moves."""
    chain_split_by_an_older_version(dsn, conn, source, target)

    code, report = invoke_json(rq_url, dsn, "drain", "--yes", "--queue", "default")
    assert code == 3 and report["moved"] == 0, report
    assert "deferred job(s) c wait on it" in left(report)["b"]
    assert status(conn, "b") == "queued" and status(conn, "c") == "deferred"
    native_rq_worker(conn, ["default"], max_jobs=1)  # b, on RQ; it queues c
    code, report = invoke_json(rq_url, dsn, "drain", "--yes")
    assert code == 0 and report["moved"] == 1, report
    cutover_worker(target)

    assert_ran_once_in_order(dsn, {"a", "b", "c"}, [("a", "b"), ("b", "c")])


def test_the_drain_queues_nothing_on_rq_outside_the_queues_it_drains(
        dsn: str, conn: redis.Redis, rq_url: str, source: RQBackend,
        target: QueueBackend) -> None:
    chain_split_by_an_older_version(dsn, conn, source, target)
    enqueue(conn, dsn, "x", queue="other")

    code, report = invoke_json(rq_url, dsn, "drain", "--yes", "--queue", "other")
    assert code == 0 and report["moved"] == 1, report
    assert status(conn, "b") == "deferred"
