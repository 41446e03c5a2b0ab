"""Adapters list the native workers (their own library's) that would bypass the fence."""

from __future__ import annotations

import psycopg
import redis
import rq
from cutover_procrastinate import ProcrastinateBackend
from cutover_rq import RQBackend


def test_control_rq_lists_rq_workers_alive_and_forgets_dead_ones(cutover_redis_url: str) -> None:
    conn = redis.Redis.from_url(cutover_redis_url)
    worker = rq.Worker(["default"], connection=conn, name="native-one")
    worker.register_birth()
    backend = RQBackend(cutover_redis_url)
    try:
        found = backend.native_workers()
        assert [w.id for w in found] == ["native-one"] and "default" in found[0].detail
        assert backend.native_workers(exclude=["native-one"]) == []
        conn.delete(worker.key)  # its hash expired: the worker stopped heartbeating
        assert backend.native_workers() == []
    finally:
        backend.close()


def test_control_procrastinate_lists_workers_with_a_fresh_heartbeat(
        cutover_database_url: str) -> None:
    backend = ProcrastinateBackend(cutover_database_url)
    try:
        with psycopg.connect(cutover_database_url, autocommit=True) as conn:
            row = conn.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
            native = str(row.fetchone()[0])  # type: ignore[index]
            stale = conn.execute("INSERT INTO procrastinate_workers (last_heartbeat) VALUES "
                                 "(now() - interval '1 hour') RETURNING id").fetchone()
        assert stale is not None
        assert [w.id for w in backend.native_workers()] == [native]
        assert backend.native_workers(exclude=[native]) == []
        backend.heartbeat("cutover-worker-1")  # this backend's own (cutover) worker registers
        mine = backend.worker_ids()
        assert len(mine) == 1 and mine[0] not in {w.id for w in backend.native_workers()}
    finally:
        backend.close()
