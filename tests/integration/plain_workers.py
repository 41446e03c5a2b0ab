"""The backends' own workers (plain RQ, plain procrastinate) running the test tasks, as an
application that never heard of cutover would run them."""

from __future__ import annotations

import asyncio

import procrastinate
import redis
import rq

from cutover.testing import tasks


def run_plain_rq_worker(rq_url: str, queue: str = "default") -> None:
    """rq.SimpleWorker in burst mode; asserts it found work."""
    conn = redis.Redis.from_url(rq_url)
    worker = rq.SimpleWorker([rq.Queue(queue, connection=conn)], connection=conn)
    assert worker.work(burst=True)


def run_plain_procrastinate_worker(pg_url: str, delete_jobs: str | None = None,
                                   app: procrastinate.App | None = None) -> None:
    """procrastinate's own worker (wait=False: until nothing is left to fetch) running
    ``cutover.testing.tasks.add`` on a plain App, or every task of ``app`` (make_app);
    ``delete_jobs`` as procrastinate's worker option."""
    if app is None:
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=pg_url))

        @app.task(name="cutover.testing.tasks.add")
        def add(a: int, b: int) -> int:
            return tasks.add(a, b)

    async def work(app: procrastinate.App) -> None:
        async with app.open_async():
            await app.run_worker_async(wait=False, install_signal_handlers=False,
                                       listen_notify=False, delete_jobs=delete_jobs)

    asyncio.run(work(app))
