"""A JSON RQ job's arguments are plain JSON: a user's dict that happens to look like the
toolkit's codec tag (``{"$cutover": "decimal", "v": "1.5"}``) is that dict, under the cutover
worker, after a move to Procrastinate and after the move back, exactly as RQ's own JSON worker
hands it to the task."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import rq
from click.testing import CliRunner, Result
from cutover_procrastinate import ProcrastinateBackend
from cutover_rq import RQBackend
from cutover_rq.decode import payload_kind

from cutover.cli import cli
from cutover.worker import Worker
from tests.integration.roundtrip_tasks import echo, registry

pytestmark = [pytest.mark.rq, pytest.mark.pg]

APP = "tests.integration.roundtrip_tasks:registry"
JSON = rq.serializers.JSONSerializer
#: Dicts a JSON producer may write that are spelled like the codec's tags (known, unknown,
#: malformed, escaped).
ARGS: tuple[Any, ...] = ({"$cutover": "decimal", "v": "1.5"}, [{"$cutover": "tuple", "v": [1]}])
KWARGS: dict[str, Any] = {"k": {"$cutover": "nope"}, "d": {"$cutover": "dict", "v": {"a": 1}},
                          "m": {"$cutover": "date", "v": "not a date"}}
META = {"tag": {"$cutover": "uuid", "v": "12345678-1234-5678-1234-567812345678"}}


def received(job_id: str, conn: redis.Redis) -> Any:
    """What the task received (its result is the repr of its call; jsonb may reorder keys, so
    compared as values: a Decimal or date where a dict was makes literal_eval fail)."""
    value = rq.job.Job.fetch(job_id, connection=conn, serializer=JSON).return_value()
    assert isinstance(value, str), value
    return ast.literal_eval(value)


@pytest.fixture
def conn(cutover_redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(cutover_redis_url)
    yield c
    c.close()


def invoke(source: str, target: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--app", APP, "--source", source, "--target", target, *args])


def enqueue(conn: redis.Redis, job_id: str) -> rq.job.Job:
    return rq.Queue("jq", connection=conn, serializer=JSON).enqueue(
        echo, *ARGS, job_id=job_id, meta=META, **KWARGS)


def test_the_cutover_worker_hands_a_json_jobs_tag_shaped_dicts_to_the_task_unchanged(
        cutover_redis_url: str, conn: redis.Redis) -> None:
    job = enqueue(conn, "b9-tag-worker")
    backend = RQBackend(cutover_redis_url)
    try:
        record = backend.get(job.id)
        assert record is not None and record.problem is None, record
        report = Worker(backend, registry, burst=True, poll_interval=0.05,
                        isolation="thread").run(install_signal_handlers=False)
    finally:
        backend.close()
    assert report.succeeded == 1, report
    assert received(job.id, conn) == (ARGS, KWARGS)


def test_tag_shaped_dicts_of_a_json_job_survive_the_move_and_the_move_back(
        cutover_redis_url: str, cutover_database_url: str, conn: redis.Redis) -> None:
    rq_url, pg_url = cutover_redis_url, cutover_database_url
    control = enqueue(conn, "b9-tag-control")
    rq.SimpleWorker([rq.Queue("jq", connection=conn, serializer=JSON)], connection=conn,
                    serializer=JSON).work(burst=True)
    assert received(control.id, conn) == (ARGS, KWARGS)  # what RQ's own JSON worker gives
    job = enqueue(conn, "b9-tag-moved")
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    result = invoke(rq_url, pg_url, "audit")
    assert result.exit_code == 0, result.output
    result = invoke(rq_url, pg_url, "drain", "--yes")
    assert result.exit_code == 0, result.output
    pg = ProcrastinateBackend(pg_url)
    try:
        moved = pg.get(job.id)
        assert moved is not None
        assert (tuple(moved.args), dict(moved.kwargs)) == (ARGS, KWARGS)
    finally:
        pg.close()
    assert invoke(rq_url, pg_url, "verify").exit_code == 0
    result = invoke(pg_url, rq_url, "audit")
    assert result.exit_code == 0, result.output
    result = invoke(pg_url, rq_url, "drain", "--yes")
    assert result.exit_code == 0, result.output
    data = conn.hget(f"rq:job:{job.id}", "data")
    assert data is not None and payload_kind(data) == "json"
    back = rq.job.Job.fetch(job.id, connection=conn, serializer=JSON)
    assert (tuple(back.args), back.kwargs) == (ARGS, KWARGS)
    assert back.meta == META
    rq.SimpleWorker([rq.Queue("jq", connection=conn, serializer=JSON)], connection=conn,
                    serializer=JSON).work(burst=True)
    assert received(job.id, conn) == (ARGS, KWARGS)
