"""A faithful move back: RQ (pickle and JSON queues) -> Procrastinate -> RQ, then RQ's own
workers of each serializer run every job exactly as its producer enqueued it."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
import rq
from click.testing import CliRunner, Result
from cutover_procrastinate import ProcrastinateBackend
from cutover_rq import RQBackend
from cutover_rq.decode import payload_kind

from cutover import Router, adapters
from cutover.cli import cli
from cutover.errors import UnsupportedValueError
from cutover.record import JobRecord
from tests.integration import roundtrip_tasks
from tests.integration.roundtrip_tasks import capture, registry

pytestmark = [pytest.mark.rq, pytest.mark.pg]

APP = "tests.integration.roundtrip_tasks:registry"
JSON = rq.serializers.JSONSerializer
PICKLE = rq.serializers.DefaultSerializer
UTC2 = dt.timezone(dt.timedelta(hours=2))

#: Every argument kind pickle carries, positional and keyword, nested.
PICKLE_VALUES: dict[str, Any] = {
    "decimal": decimal.Decimal("12.30"), "aware": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC2),
    "naive": dt.datetime(2026, 1, 2, 3, 4, 5), "date": dt.date(2026, 5, 6),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"), "tuple": (1, "two", 3.0),
    "set": {1, 2, 3}, "frozenset": frozenset({"x"}), "bytes": b"\x00\xffraw",
    "nested": {"list": [decimal.Decimal("1.5"), (b"b", {2, 4})], "none": None, "t": True},
    "big": 2**70, "text": "héllo ✓",
}
#: What JSON carries: a JSON queue's producers can only write these.
JSON_VALUES: dict[str, Any] = {
    "int": 7, "float": 2.5, "text": "héllo ✓", "none": None, "bool": False,
    "list": [1, "a", [2, {"k": "v"}]], "dict": {"nested": {"deep": [1, 2]}},
}
OPTIONS = {"description": "a description of its own", "job_timeout": 77, "ttl": 3600,
           "result_ttl": 1234, "failure_ttl": 4321}
PICKLE_META = {"tenant": "acme", "when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
               "amount": decimal.Decimal("9.99"), "tags": {"a", "b"}}
JSON_META = {"tenant": "acme", "n": 3, "path": ["a", {"b": None}]}


def cases(values: dict[str, Any], meta: dict[str, Any]
          ) -> dict[str, tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]]:
    """(args, kwargs, enqueue options) per case, as a producer writes them."""
    v = list(values.values())
    return {
        "positional": ((v[0], v[1]), {}, {}),
        "keyword": ((), {"a": v[0], "b": v[1], **values}, {}),
        "mixed": ((v[2],), {"b": v[3], **dict(list(values.items())[4:])}, {}),
        "varargs": (tuple(v), {"flag": v[-1]}, {}),
        "options": ((v[1], v[0]), {"z": v[2]}, {**OPTIONS, "meta": meta}),
    }


def typed(value: Any) -> Any:
    """A value with every type spelled out, so 1 == 1.0 == Decimal(1) and (1,) == [1] are told
    apart."""
    if isinstance(value, dict):
        return ("dict", sorted((repr(k), typed(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(v) for v in value])
    if isinstance(value, set | frozenset):
        return (type(value).__name__, sorted(repr(typed(v)) for v in value))
    return (type(value).__name__, repr(value))


def with_json(url: str) -> str:
    return url + ("&" if "?" in url else "?") + "serializer=json"


def invoke(source: str, target: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--app", APP, "--source", source, "--target", target, *args])


@pytest.fixture
def conn(cutover_redis_url: str) -> Iterator[redis.Redis]:
    roundtrip_tasks.seen.clear()
    c = redis.Redis.from_url(cutover_redis_url)
    yield c
    c.close()


def run_natively(conn: redis.Redis, queue: str, serializer: Any) -> None:
    q = rq.Queue(queue, connection=conn, serializer=serializer)
    worker = rq.SimpleWorker([q], connection=conn, serializer=serializer)
    worker.work(burst=True)


def enqueue(conn: redis.Redis, queue: str, serializer: Any, prefix: str,
            made: dict[str, tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]]) -> None:
    q = rq.Queue(queue, connection=conn, serializer=serializer)
    for name, (args, kwargs, options) in made.items():
        q.enqueue_call(capture, args=args, kwargs=kwargs, job_id=f"{prefix}-{queue}-{name}",
                       timeout=options.get("job_timeout"),
                       **{k: v for k, v in options.items() if k != "job_timeout"})


def test_rq_jobs_of_both_serializers_come_back_as_their_producers_wrote_them(
        cutover_redis_url: str, cutover_database_url: str, conn: redis.Redis) -> None:
    rq_url, pg_url = cutover_redis_url, cutover_database_url
    made = {"pq": cases(PICKLE_VALUES, PICKLE_META), "jq": cases(JSON_VALUES, JSON_META)}
    serializers = {"pq": PICKLE, "jq": JSON}
    # Control copies, run by RQ's own workers where they were enqueued: what the task receives
    # when nothing moves (JSON turns tuples into lists, pickle keeps everything).
    for queue, serializer in serializers.items():
        enqueue(conn, queue, serializer, "ctl", made[queue])
        run_natively(conn, queue, serializer)
    assert len(roundtrip_tasks.seen) == 10
    for queue, serializer in serializers.items():
        enqueue(conn, queue, serializer, "job", made[queue])
    originals = {j: rq.job.Job.fetch(j, connection=conn, serializer=serializers[j.split("-")[1]])
                 for j in (f"job-{q}-{n}" for q in made for n in made[q])}
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0

    result = invoke(rq_url, pg_url, "drain", "--yes")
    assert result.exit_code == 0, result.output
    assert not any(conn.exists(f"rq:job:{j}") for j in originals)
    with psycopg.connect(pg_url) as pg:
        carried = dict(pg.execute("SELECT cutover_id, native FROM cutover_jobs").fetchall())
    assert carried["job-jq-options"]["rq"]["serializer"] == "json"
    assert carried["job-pq-positional"]["positional"] == ["a", "b"]
    pg = ProcrastinateBackend(pg_url)
    try:  # the job's own time limit holds on Procrastinate too (the cutover worker reads it)
        moved = pg.get("job-pq-options")
        assert moved is not None and moved.timeout == 77
    finally:
        pg.close()
    result = invoke(rq_url, pg_url, "verify")
    assert result.exit_code == 0, result.output

    # Back to an RQ URL with no serializer option: each job's own memory decides.
    result = invoke(pg_url, rq_url, "drain", "--yes")
    assert result.exit_code == 0, result.output
    result = invoke(pg_url, rq_url, "verify")
    assert result.exit_code == 0, result.output

    for job_id, original in originals.items():
        data = conn.hget(f"rq:job:{job_id}", "data")
        assert data is not None
        assert payload_kind(data) == ("json" if "-jq-" in job_id else "pickle"), job_id
        back = rq.job.Job.fetch(job_id, connection=conn, serializer=original.serializer)
        for field in ("description", "timeout", "ttl", "result_ttl", "failure_ttl", "origin"):
            assert getattr(back, field) == getattr(original, field), (job_id, field)
        assert typed(back.meta) == typed(original.meta), job_id
    for queue, serializer in serializers.items():
        run_natively(conn, queue, serializer)
    for queue in made:
        for name, (args, kwargs, options) in made[queue].items():
            got = roundtrip_tasks.seen.get(f"job-{queue}-{name}")
            assert got is not None, f"{queue}/{name} did not run"
            control = roundtrip_tasks.seen[f"ctl-{queue}-{name}"]
            assert typed(got) == typed(control), (queue, name)
            if queue == "pq":  # pickle: exactly the producer's values and types
                assert typed(tuple(got["args"])) == typed(args)
                assert typed(got["kwargs"]) == typed(kwargs)
                if options:
                    assert got["meta"] == PICKLE_META and got["timeout"] == 77
                    assert (got["description"], got["ttl"], got["result_ttl"],
                            got["failure_ttl"]) == ("a description of its own", 3600, 1234, 4321)
            else:  # JSON: what JSON gives back, as lists where the producer had tuples
                assert got["args"] == json.loads(json.dumps(args))
                assert got["kwargs"] == json.loads(json.dumps(kwargs))
    for job_id in originals:
        status = rq.job.Job.fetch(job_id, connection=conn,
                                  serializer=originals[job_id].serializer).get_status()
        assert status == rq.job.JobStatus.FINISHED, job_id


def test_a_mixed_serializer_queue_goes_back_job_by_job(
        cutover_redis_url: str, cutover_database_url: str, conn: redis.Redis) -> None:
    rq_url, pg_url = cutover_redis_url, cutover_database_url
    pickled = rq.Queue("mixed", connection=conn)
    jsoned = rq.Queue("mixed", connection=conn, serializer=JSON)
    ids = {}
    for i in range(6):
        queue, kind = (pickled, "pickle") if i % 2 else (jsoned, "json")
        ids[queue.enqueue(capture, i, b=[i]).id] = kind
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    assert invoke(rq_url, pg_url, "drain", "--yes").exit_code == 0
    # The target URL says json: the jobs' own memory still comes first.
    result = invoke(pg_url, with_json(rq_url), "drain", "--yes")
    assert result.exit_code == 0, result.output
    for job_id, kind in ids.items():
        data = conn.hget(f"rq:job:{job_id}", "data")
        assert data is not None and payload_kind(data) == kind, job_id
        job = rq.job.Job.fetch(job_id, connection=conn, serializer=JSON if kind == "json"
                               else PICKLE)
        n = int(job.args[0])
        assert (list(job.args), job.kwargs) == ([n], {"b": [n]})


def test_new_jobs_take_the_serializer_their_queue_uses(cutover_redis_url: str,
                                                       conn: redis.Redis) -> None:
    rq.Queue("jq", connection=conn, serializer=JSON).enqueue(capture, 1)
    rq.Queue("pq", connection=conn).enqueue(capture, 1)
    plain = RQBackend(cutover_redis_url)
    told_json = RQBackend(with_json(cutover_redis_url))
    try:
        made = {}
        for backend in (plain, told_json):
            # an empty queue of each: then the URL option decides
            for queue in ("jq", "pq", f"empty-{backend.serializer_name}"):
                record = registry.make_record(capture, (5,), {"b": 6}, queue=queue)
                backend.enqueue([record])
                data = conn.hget(f"rq:job:{record.id}", "data")
                assert data is not None
                made[(backend.serializer_name, queue)] = payload_kind(data)
        assert made == {("pickle", "jq"): "json", ("pickle", "pq"): "pickle",
                        ("pickle", "empty-pickle"): "pickle", ("json", "jq"): "json",
                        ("json", "pq"): "pickle", ("json", "empty-json"): "json"}
        run_natively(conn, "jq", JSON)
        assert sum(1 for s in roundtrip_tasks.seen.values() if s["kwargs"] == {"a": 5, "b": 6}) \
            == 2
    finally:
        plain.close()
        told_json.close()


def test_meta_that_is_not_plain_data_stays_a_named_loss(cutover_redis_url: str,
                                                        conn: redis.Redis) -> None:
    job = rq.Queue("pq", connection=conn).enqueue(capture, 1, meta={"who": rq.Retry(max=1)})
    backend = adapters.open_backend(cutover_redis_url)
    try:
        record = backend.get(job.id)
        assert record is not None and record.problem is None
        assert "meta" not in record.native["rq"]
        assert "rq meta (not plain data: not carried)" in record.losses
    finally:
        backend.close()


def test_normalize_remembers_which_names_were_positional() -> None:
    raw = JobRecord(id="j", task="tests.integration.roundtrip_tasks.capture", args=(1, 2),
                    kwargs={"x": 3})
    record = registry.normalize(raw)
    assert (record.args, dict(record.kwargs)) == ((), {"a": 1, "b": 2, "x": 3})
    assert record.native["positional"] == ["a", "b"]
    assert record.digest() == registry.normalize(raw.replace(args=(), kwargs={
        "x": 3, "b": 2, "a": 1})).digest()
    star = registry.normalize(raw.replace(args=(1, 2, 3)))
    assert star.args == (1, 2, 3) and "positional" not in star.native


def test_an_older_cutover_jobs_table_gains_the_native_column(cutover_database_url: str) -> None:
    with psycopg.connect(cutover_database_url, autocommit=True) as pg:
        ProcrastinateBackend(cutover_database_url).close()
        pg.execute("ALTER TABLE cutover_jobs DROP COLUMN native")
    backend = ProcrastinateBackend(cutover_database_url)
    try:
        memory = {"positional": ["a"], "rq": {"serializer": "json", "timeout": 5,
                                               "meta": {"k": [1]}}}
        record = registry.make_record(capture, (), {"a": 1}).replace(native=memory)
        backend.put([record])
        found = backend.get(record.id)
        assert found is not None and found.native == memory
    finally:
        backend.close()


def test_values_json_cannot_hold_stay_in_place_rather_than_reach_a_json_worker_tagged(
        cutover_redis_url: str, cutover_database_url: str, conn: redis.Redis) -> None:
    rq_url, pg_url = cutover_redis_url, cutover_database_url
    rq.Queue("jq", connection=conn, serializer=JSON).enqueue(capture, 0)  # jq: a JSON queue
    rq.Queue("pq", connection=conn).enqueue(capture, 0)  # pq: a pickle queue
    pg = ProcrastinateBackend(pg_url)
    plain = registry.make_record(capture, (1,), {"b": [2, {"c": None}]}, queue="jq")
    rich = registry.make_record(capture, (decimal.Decimal("1.5"),), {"b": (1, 2)}, queue="jq")
    pickled = rich.replace(id="rich-for-pickle", queue="pq")
    try:
        pg.put([plain, rich, pickled])
    finally:
        pg.close()
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    result = invoke(pg_url, rq_url, "--json", "audit")
    report = json.loads(result.stdout)
    unsupported = {j["id"]: j["reason"] for j in report["jobs"].get("unsupported", [])}
    assert list(unsupported) == [rich.id], report
    assert "JSON cannot hold kwargs['a'] (a Decimal), kwargs['b'] (a tuple)" in \
        unsupported[rich.id]
    result = invoke(pg_url, rq_url, "drain", "--yes")
    assert result.exit_code == 3, result.output
    assert not conn.exists(f"rq:job:{rich.id}")
    assert conn.exists(f"rq:job:{plain.id}") and conn.exists("rq:job:rich-for-pickle")
    run_natively(conn, "jq", JSON)
    run_natively(conn, "pq", PICKLE)
    assert roundtrip_tasks.seen[plain.id]["kwargs"] == {"a": 1, "b": [2, {"c": None}]}
    assert typed(roundtrip_tasks.seen["rich-for-pickle"]["kwargs"]) == typed(
        {"a": decimal.Decimal("1.5"), "b": (1, 2)})


def test_the_router_refuses_values_a_json_queue_cannot_hold_and_writes_nothing(
        cutover_redis_url: str, conn: redis.Redis) -> None:
    rq.Queue("jq", connection=conn, serializer=JSON).enqueue(capture, 0)
    router = Router(registry, source=cutover_redis_url)
    try:
        with pytest.raises(UnsupportedValueError, match=r"kwargs\['b'\] \(a UUID\)"):
            router.enqueue(capture, 1, b=uuid.uuid4(), queue="jq")
        assert conn.llen("rq:queue:jq") == 1
        job_id = router.enqueue(capture, 1, b={"plain": [True]}, queue="jq")
        job_with_uuid = router.enqueue(capture, 1, b=uuid.uuid4(), queue="pickled")
    finally:
        router.close()
    run_natively(conn, "jq", JSON)
    run_natively(conn, "pickled", PICKLE)
    assert roundtrip_tasks.seen[job_id]["kwargs"] == {"a": 1, "b": {"plain": [True]}}
    assert isinstance(roundtrip_tasks.seen[job_with_uuid]["kwargs"]["b"], uuid.UUID)
