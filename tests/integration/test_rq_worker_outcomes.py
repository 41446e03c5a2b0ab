"""What the cutover worker leaves on RQ is what RQ's own API and worker would leave: results
and failures readable with ``Job.fetch``, registries, TTLs, and retries on time.

Run with rq 3.x (.venv) and rq 2.12 (``CUTOVER_RQ_VERSION=2.12.0 scripts/setup``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import rq
from cutover_rq import RQBackend
from rq.results import Result

from cutover.record import JobState
from cutover.worker import Worker
from tests.integration import worker_tasks
from tests.integration.worker_tasks import registry

pytestmark = pytest.mark.rq

SERIALIZERS = {"pickle": rq.serializers.DefaultSerializer, "json": rq.serializers.JSONSerializer}


@pytest.fixture
def backend(cutover_redis_url: str) -> Iterator[RQBackend]:
    b = RQBackend(cutover_redis_url)
    yield b
    b.close()


def burst(backend: RQBackend) -> None:
    Worker(backend, registry, burst=True, poll_interval=0.05,
           isolation="process").run(install_signal_handlers=False)


def enqueue(conn: redis.Redis, kind: str, func: str, *args: Any, **options: Any) -> rq.job.Job:
    queue = rq.Queue("default", connection=conn, serializer=SERIALIZERS[kind])
    return queue.enqueue(func, *args, **options)


@pytest.mark.parametrize("kind", ["pickle", "json"])
def test_results_are_read_by_rqs_own_api_with_the_jobs_serializer(
        backend: RQBackend, kind: str) -> None:
    conn = backend.redis
    job = enqueue(conn, kind, "w.double", 21)
    burst(backend)
    fetched = rq.job.Job.fetch(job.id, connection=conn, serializer=SERIALIZERS[kind])
    assert fetched.get_status() == "finished"
    assert fetched.return_value() == 42
    latest = fetched.latest_result()
    assert latest is not None and latest.type == Result.Type.SUCCESSFUL
    assert latest.return_value == 42 and latest.worker_name.startswith("cutover.")
    assert job.id in rq.registry.FinishedJobRegistry("default", connection=conn).get_job_ids()
    # RQ's default result_ttl: the job, its results and its registry entry go after 500 s.
    assert 490 <= conn.ttl(f"rq:job:{job.id}") <= 500
    assert 490 <= conn.ttl(f"rq:results:{job.id}") <= 500
    score = conn.zscore("rq:finished:default", job.id)
    assert score is not None and abs(score - (time.time() + 500)) < 10


def test_a_result_the_json_serializer_cannot_write_is_rqs_placeholder(
        backend: RQBackend) -> None:
    conn = backend.redis
    job = enqueue(conn, "json", "w.a_set")
    burst(backend)
    fetched = rq.job.Job.fetch(job.id, connection=conn, serializer=SERIALIZERS["json"])
    assert fetched.get_status() == "finished"
    assert fetched.return_value() == "Unserializable return value"


@pytest.mark.parametrize("kind", ["pickle", "json"])
def test_failures_are_read_by_rqs_own_api_with_their_traceback(
        backend: RQBackend, kind: str) -> None:
    conn = backend.redis
    job = enqueue(conn, kind, "w.boom", "it broke")
    burst(backend)
    fetched = rq.job.Job.fetch(job.id, connection=conn, serializer=SERIALIZERS[kind])
    assert fetched.get_status() == "failed"
    assert fetched.return_value() is None
    latest = fetched.latest_result()
    assert latest is not None and latest.type == Result.Type.FAILED
    assert latest.exc_string is not None
    assert "Traceback (most recent call last)" in latest.exc_string
    assert "ValueError: it broke" in latest.exc_string
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert "ValueError: it broke" in (fetched.exc_info or "")
    assert job.id in rq.registry.FailedJobRegistry("default", connection=conn).get_job_ids()
    year = 31_536_000
    assert year - 10 <= conn.ttl(f"rq:job:{job.id}") <= year
    assert year - 10 <= conn.ttl(f"rq:results:{job.id}") <= year


def test_the_jobs_own_ttls_win(backend: RQBackend) -> None:
    conn = backend.redis
    short = enqueue(conn, "pickle", "w.double", 1, result_ttl=100)
    forever = enqueue(conn, "pickle", "w.double", 2, result_ttl=-1)
    gone = enqueue(conn, "pickle", "w.double", 3, result_ttl=0)
    failed = enqueue(conn, "pickle", "w.boom", "x", failure_ttl=50)
    burst(backend)
    assert 90 <= conn.ttl(f"rq:job:{short.id}") <= 100
    assert 90 <= conn.ttl(f"rq:results:{short.id}") <= 100
    assert conn.ttl(f"rq:job:{forever.id}") == -1
    assert conn.ttl(f"rq:results:{forever.id}") == -1
    assert conn.zscore("rq:finished:default", forever.id) == float("inf")
    assert rq.job.Job.fetch(forever.id, connection=conn).return_value() == 4
    # result_ttl=0: nothing kept (the hash lingers a second, for its dependents' release).
    assert not conn.exists(f"rq:results:{gone.id}")
    assert conn.ttl(f"rq:job:{gone.id}") in (-2, 0, 1)
    assert conn.zscore("rq:finished:default", gone.id) is None
    assert 40 <= conn.ttl(f"rq:job:{failed.id}") <= 50
    assert 40 <= conn.ttl(f"rq:results:{failed.id}") <= 50


def test_a_dependent_of_a_job_with_result_ttl_0_still_runs(backend: RQBackend) -> None:
    conn = backend.redis
    parent = enqueue(conn, "pickle", "w.double", 1, result_ttl=0)
    child = enqueue(conn, "pickle", "w.double", 2, depends_on=parent)
    burst(backend)
    assert rq.job.Job.fetch(child.id, connection=conn).return_value() == 4
    time.sleep(1.1)
    assert not conn.exists(f"rq:job:{parent.id}")


def test_the_jobs_rq_timeout_is_honoured(backend: RQBackend) -> None:
    conn = backend.redis
    job = enqueue(conn, "pickle", "w.sleep", 30, job_timeout=1)
    started = time.monotonic()
    burst(backend)
    assert time.monotonic() - started < 1 + 3
    fetched = rq.job.Job.fetch(job.id, connection=conn)
    assert fetched.get_status() == "failed"
    latest = fetched.latest_result()
    assert latest is not None and "JobTimeoutError" in (latest.exc_string or "")


def test_a_one_second_backoff_retries_after_about_one_second(backend: RQBackend) -> None:
    worker_tasks.starts.clear()
    record = registry.make_record("w.fail_once", ("retry-timing",))
    backend.enqueue([record])
    worker = Worker(backend, registry, poll_interval=0.5, isolation="thread")
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = backend.get(record.id)
            if done is not None and done.state is JobState.FINISHED:
                break
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(10)
    first, second = worker_tasks.starts["retry-timing"]
    # RQ's own scheduler works in whole seconds (and polls once a second): up to 2 s. The
    # cutover worker keeps the exact time and wakes up for it.
    assert 1.0 <= second - first < 1.3, second - first
    assert backend.get(record.id).state is JobState.FINISHED  # type: ignore[union-attr]


def test_a_scheduled_retry_keeps_its_sub_second_time(backend: RQBackend) -> None:
    record = registry.make_record("w.boom", ("x",)).replace(max_attempts=2,
                                                            retry_intervals=(5.0,))
    backend.enqueue([record])
    before = time.time()
    burst(backend)
    score = backend.redis.zscore("rq:scheduled:default", record.id)
    assert score is not None and before + 5 <= score < time.time() + 5
    assert score != int(score) or before + 5 == int(score)
    done = backend.get(record.id)
    assert done is not None and done.state is JobState.SCHEDULED
    assert done.run_at is not None
    # The record keeps whole seconds rounded up (never early); the score keeps the exact time.
    due = dt.datetime.fromtimestamp(score, dt.UTC)
    assert done.run_at - dt.timedelta(seconds=1) < due <= done.run_at
