"""The public producer facade, ``cutover.Router``, on every backend an application can start on."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from cutover import Call, Router, adapters
from cutover.errors import BackendUnavailableError, ConfigurationError, UnknownTaskError
from cutover.metrics import Metrics, summary
from cutover.record import JobState, utcnow
from cutover.testing import tasks
from cutover.testing.tasks import registry


@pytest.fixture(params=["memory", "rq", "procrastinate"])
def source_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL an application would give the router (memory: a store this test names)."""
    if request.param == "memory":
        yield f"memory://router-{uuid.uuid4().hex[:8]}"
    else:
        fixture = "cutover_redis_url" if request.param == "rq" else "cutover_database_url"
        yield request.getfixturevalue(fixture)


def test_enqueue_by_function_and_by_name_lands_on_the_source(source_url: str) -> None:
    with Router(registry, source=source_url) as router:
        by_func = router.enqueue(tasks.add, 1, 2)
        by_name = router.enqueue("cutover.testing.tasks.add", 3, b=4)
        by_alias = router.enqueue("cutover.testing.tasks.old_echo", x=[1, 2])
    backend = adapters.open_backend(source_url)
    try:
        found = {i: backend.get(i) for i in (by_func, by_name, by_alias)}
        assert len(set(found)) == 3
        first, second, third = (found[i] for i in (by_func, by_name, by_alias))
        assert first is not None and second is not None and third is not None
        assert (first.task, dict(first.kwargs)) == ("cutover.testing.tasks.add", {"a": 1, "b": 2})
        assert (second.task, dict(second.kwargs)) == ("cutover.testing.tasks.add",
                                                       {"a": 3, "b": 4})
        assert third.task == "cutover.testing.tasks.echo"  # the alias resolves to the task
        for record in (first, second, third):
            assert record.state is JobState.QUEUED and record.queue == "default"
    finally:
        backend.close()


def test_job_key_enqueues_one_live_job_and_returns_its_id(source_url: str) -> None:
    with Router(registry, source=source_url) as router:
        first = router.enqueue(tasks.add, 1, 1, job_key="invoice-42")
        again = router.enqueue(tasks.add, 2, 2, job_key="invoice-42")
        other = router.enqueue(tasks.add, 3, 3, job_key="invoice-43")
    assert again == first and other != first
    backend = adapters.open_backend(source_url)
    try:
        jobs = list(backend.snapshot())
        assert sorted(r.job_key or "" for r in jobs) == ["invoice-42", "invoice-43"]
        kept = backend.get(first)
        assert kept is not None and dict(kept.kwargs) == {"a": 1, "b": 1}
    finally:
        backend.close()


def test_queue_run_at_and_priority_are_kept(source_url: str) -> None:
    later = (utcnow() + dt.timedelta(hours=3)).replace(microsecond=0)
    with Router(registry, source=source_url) as router:
        routed = router.enqueue(tasks.add, 1, 2, queue="reports")
        by_task = router.enqueue(tasks.elsewhere, 5)  # the task's own default queue
        scheduled = router.enqueue(tasks.add, 3, 4, run_at=later)
        urgent = router.enqueue(tasks.add, 5, 6, priority=7)
    backend = adapters.open_backend(source_url)
    try:
        got = {name: backend.get(i) for name, i in (("routed", routed), ("by_task", by_task),
                                                   ("scheduled", scheduled),
                                                   ("urgent", urgent))}
        assert got["routed"] is not None and got["routed"].queue == "reports"
        assert got["by_task"] is not None and got["by_task"].queue == "other"
        record = got["scheduled"]
        assert record is not None and record.state is JobState.SCHEDULED
        assert record.run_at == later
        record = got["urgent"]
        assert record is not None and record.state is JobState.QUEUED
        if backend.capabilities.priority:
            assert record.priority == 7
    finally:
        backend.close()


def test_an_unknown_task_is_refused_with_a_suggestion(source_url: str) -> None:
    with Router(registry, source=source_url) as router, \
            pytest.raises(UnknownTaskError, match="did you mean"):
        router.enqueue("cutover.testing.tasks.ad", 1, 2)


def test_close_releases_the_connections_and_the_router_can_enqueue_again(
        cutover_database_url: str) -> None:
    def connections(settle_to: int | None = None) -> int:
        """Other connections to the database; with ``settle_to``, wait (up to 5 s) for the
        server to see closed ones go (a backend leaves pg_stat_activity a moment later)."""
        deadline = time.monotonic() + 5
        while True:
            with psycopg.connect(cutover_database_url, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                   "current_database() AND pid <> pg_backend_pid()").fetchone()
            n = int(row[0]) if row else 0
            if settle_to is None or n <= settle_to or time.monotonic() > deadline:
                return n
            time.sleep(0.05)

    before = connections()
    router = Router(registry, source=cutover_database_url)
    router.enqueue(tasks.add, 1, 2)
    opened = router.source  # kept alive here: closing must not rely on garbage collection
    assert connections() > before
    router.close()
    assert connections(settle_to=before) == before
    assert router.source is not opened
    router.close()  # twice is fine
    job = router.enqueue(tasks.add, 3, 4)  # opens again on demand
    with router:
        assert router.source.get(job) is not None
    assert connections(settle_to=before) == before


def test_from_env_reads_source_and_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTOVER_SOURCE", "memory://router-env")
    monkeypatch.setenv("CUTOVER_TARGET", "postgresql://app@db.example/app")
    router = Router.from_env(registry)
    assert router.source_url == "memory://router-env"
    assert router.target_url == "postgresql://app@db.example/app"
    # With a target, the phase lives in its database: unreachable, the router cannot know
    # where a job must go, and refuses rather than guess (it might be rampdown already).
    for _ in range(2):  # every call, not just the first
        with pytest.raises(BackendUnavailableError, match="control plane"):
            router.enqueue(tasks.add, 1, 2)
    router.close()
    monkeypatch.setenv("CUTOVER_TARGET", "")
    plain = Router.from_env(registry)
    assert plain.target_url is None
    job = plain.enqueue(tasks.add, 1, 2)  # no target: no control plane, the source only
    assert plain.source.get(job) is not None
    plain.close()


def test_from_env_without_a_source_is_a_configuration_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUTOVER_SOURCE", raising=False)
    with pytest.raises(ConfigurationError, match="CUTOVER_SOURCE") as err:
        Router.from_env(registry)
    assert err.value.exit_code == 2


def test_enqueue_many_returns_each_calls_id_in_order_and_keeps_the_rules(
        source_url: str) -> None:
    later = (utcnow() + dt.timedelta(hours=1)).replace(microsecond=0)
    with Router(registry, source=source_url) as router:
        held = router.enqueue(tasks.add, 0, 0, job_key="batch-key")
        ids = router.enqueue_many([
            Call(tasks.add, args=(1, 2)),
            Call("cutover.testing.tasks.add", kwargs={"a": 3, "b": 4}, queue="reports"),
            Call(tasks.add, args=(5, 6), job_key="batch-key"),  # held by a live job
            Call(tasks.add, args=(7, 8), job_key="fresh-key"),
            Call(tasks.add, args=(9, 9), job_key="fresh-key"),  # held by the call before
            Call(tasks.add, args=(1, 1), run_at=later, priority=3),
        ])
        assert router.enqueue_many([]) == []
    assert len(ids) == 6
    assert ids[2] == held and ids[4] == ids[3]
    assert len({ids[0], ids[1], ids[3], ids[5], held}) == 5
    backend = adapters.open_backend(source_url)
    try:
        got = [backend.get(i) for i in ids]
        assert all(r is not None for r in got)
        first, second, _, fourth, _, last = got
        assert first is not None and dict(first.kwargs) == {"a": 1, "b": 2}
        assert second is not None and second.queue == "reports"
        assert dict(second.kwargs) == {"a": 3, "b": 4}
        assert fourth is not None and dict(fourth.kwargs) == {"a": 7, "b": 8}
        assert last is not None and last.state is JobState.SCHEDULED and last.run_at == later
        if backend.capabilities.priority:
            assert last.priority == 3
        assert len(list(backend.snapshot())) == 5
    finally:
        backend.close()


def test_enqueue_many_checks_every_call_before_sending_any(source_url: str) -> None:
    with Router(registry, source=source_url) as router:
        with pytest.raises(UnknownTaskError):
            router.enqueue_many([Call(tasks.add, args=(1, 2)),
                                 Call("cutover.testing.tasks.ad", args=(1, 2))])
        assert list(router.source.snapshot()) == []


# -- metrics: every enqueue call is timed and counted per backend ----------------------------

def test_enqueue_calls_are_timed_and_counted_per_backend(source_url: str) -> None:
    metrics = Metrics()
    with Router(registry, source=source_url, metrics=metrics) as router:
        router.enqueue(tasks.add, 1, 2)
        router.enqueue(tasks.add, 3, 4)
        router.enqueue_many([Call(tasks.add, (5, 6)), Call(tasks.add, (7, 8))])
        name = router.source.name
    snap = metrics.snapshot()
    assert list(snap["backends"]) == [name]
    numbers = snap["backends"][name]
    assert sum(numbers["latency_buckets"]) == 3  # three calls, one of them a batch of two
    assert numbers["enqueued"] == 4
    assert numbers["latency_sum"] > 0
    p50 = summary(snap)[name]["enqueue_p50"]
    assert p50 is not None and 0 < p50 < 10


def test_a_failed_enqueue_counts_an_error_and_no_latency(
        source_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    with Router(registry, source=source_url, metrics=metrics) as router:
        name = router.source.name

        def refuse(records: object) -> list[str]:
            raise BackendUnavailableError("store went away (metrics test)")

        monkeypatch.setattr(router.source, "enqueue", refuse)
        with pytest.raises(BackendUnavailableError):
            router.enqueue(tasks.add, 1, 2)
    numbers = metrics.snapshot()["backends"][name]
    assert numbers["enqueue_errors"] == 1
    assert sum(numbers["latency_buckets"]) == 0
    assert numbers["enqueued"] == 0
