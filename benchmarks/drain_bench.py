"""Drain benchmark: an RQ backlog moved to Procrastinate, against this machine's raw limits.

Measured in one run, on the same jobs (the webhook pipeline's `process_event`, 4 args: str,
str, Decimal, datetime):

- read limit: pipelined HGETALL of every job + zlib + pickle.loads (no cutover code);
- write limit: COPY of the same rows into procrastinate_jobs (triggers on, as in production);
- naive mover: read one job, procrastinate `defer` it, one by one (on a sample);
- cutover drain (in a child process, to measure its peak memory), then cutover verify, then the
  same jobs drained back to RQ (a rollback's data path) and verified; once per ``--workers``
  count, each on the same backlog built anew.

Usage: python -m benchmarks.drain_bench [--jobs N] [--naive-sample N] [--workers 1,2]
                                        [--json PATH]
Servers: CUTOVER_TEST_DATABASE_URL / CUTOVER_TEST_REDIS_URL, else embedded ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import os
import pickle
import platform
import subprocess
import sys
import time
import zlib
from typing import Any

import procrastinate
import psycopg
import redis
import rq

from cutover.testing.servers import PostgresServer, RedisServer

TASK = "examples.webhooks.app.process_event"
CHILD = r"""
import json, sys, time
from cutover import adapters
from cutover.control import ControlPlane
from cutover.drain import Drain, DrainOptions
from cutover.verify import verify
from examples.webhooks.app import registry
src_url, tgt_url, batch, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
src, tgt = adapters.open_backend(src_url), adapters.open_backend(tgt_url)
control = ControlPlane(tgt_url); control.init()
t = time.perf_counter()
report = Drain(src, src_url, tgt, tgt_url, control, registry,
               DrainOptions(batch_size=batch, workers=workers)).run()
drain_s = time.perf_counter() - t
def hwm():
    # VmHWM of this process's own address space. (ru_maxrss would start at the parent's RSS:
    # Linux keeps the maximum across fork and exec.)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
rss_drain = hwm()
# The drain's worker processes (--workers > 1), reaped by now: the largest one's peak RSS.
import resource
rss_workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers > 1 else 0
t = time.perf_counter()
result = verify(src, src_url, tgt, tgt_url, control)
verify_s = time.perf_counter() - t
# Then the same jobs back to RQ (the data path of a rollback), and verify that move too.
t = time.perf_counter()
back = Drain(tgt, tgt_url, src, src_url, control, registry,
             DrainOptions(batch_size=batch, workers=workers)).run()
back_s = time.perf_counter() - t
back_clean = verify(tgt, tgt_url, src, src_url, control).clean
print(json.dumps({"moved": report.moved, "drain_s": drain_s, "verify_s": verify_s,
                  "verified": result.verified, "clean": result.clean,
                  "peak_rss_mb_after_drain": rss_drain, "peak_rss_mb": hwm(),
                  "peak_rss_mb_largest_worker": rss_workers,
                  "moved_back": back.moved, "back_s": back_s, "back_clean": back_clean}))
"""


def args_for(i: int) -> tuple[Any, ...]:
    kinds = ("charge.succeeded", "invoice.paid", "charge.refunded")
    return (f"evt_{i:08d}", kinds[i % 3], decimal.Decimal(f"{10 + i % 5000}.{i % 100:02d}"),
            dt.datetime(2026, 11, 28, tzinfo=dt.UTC) + dt.timedelta(seconds=i))


def build_backlog(url: str, n: int) -> list[str]:
    conn = redis.Redis.from_url(url)
    queue = rq.Queue("webhooks", connection=conn)
    ids: list[str] = []
    for start in range(0, n, 5000):
        with conn.pipeline() as pipe:
            datas = [rq.Queue.prepare_data(TASK, args=args_for(i))
                     for i in range(start, min(start + 5000, n))]
            ids += [j.id for j in queue.enqueue_many(datas, pipeline=pipe)]
            pipe.execute()
    conn.close()
    return ids


def read_limit(url: str, ids: list[str]) -> float:
    conn = redis.Redis.from_url(url)
    t = time.perf_counter()
    for start in range(0, len(ids), 1000):
        pipe = conn.pipeline(transaction=False)
        for job_id in ids[start:start + 1000]:
            pipe.hgetall(f"rq:job:{job_id}")
        for h in pipe.execute():
            pickle.loads(zlib.decompress(h[b"data"]))
    return len(ids) / (time.perf_counter() - t)


def copy_limit(pg: PostgresServer, n: int) -> float:
    url = pg.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        rows = [("webhooks", TASK, json.dumps({"event_id": a[0], "kind": a[1],
                                                "amount": str(a[2]),
                                                "received_at": a[3].isoformat()}))
                for a in map(args_for, range(n))]
        t = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                "COPY procrastinate_jobs (queue_name, task_name, args) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        rate = n / (time.perf_counter() - t)
    pg.drop_database(url)
    return rate


def naive_mover(rq_url: str, pg: PostgresServer, ids: list[str]) -> float:
    url = pg.create_database()
    conn = redis.Redis.from_url(rq_url)
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=url))
    with app.open():
        deferrer = app.configure_task(TASK, allow_unknown=True)
        t = time.perf_counter()
        for job_id in ids:
            h = conn.hgetall(f"rq:job:{job_id}")
            _, _, args, _ = pickle.loads(zlib.decompress(h[b"data"]))
            deferrer.defer(event_id=args[0], kind=args[1], amount=str(args[2]),
                           received_at=args[3].isoformat())
        rate = len(ids) / (time.perf_counter() - t)
    pg.drop_database(url)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--naive-sample", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--workers", type=lambda text: [int(w) for w in text.split(",")],
                        default=[1, 2], help="drain worker processes, one drain each "
                        "(comma-separated; default 1,2)")
    parser.add_argument("--json", default=None)
    opts = parser.parse_args()
    rs, pg = RedisServer(databases=1), PostgresServer()
    try:
        rq_url = rs.fresh_database()
        t = time.perf_counter()
        ids = build_backlog(rq_url, opts.jobs)
        print(f"built {len(ids)} RQ jobs in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        results: dict[str, Any] = {"jobs": len(ids)}
        results["read_limit_jobs_s"] = read_limit(rq_url, ids)
        results["copy_limit_rows_s"] = copy_limit(pg, len(ids))
        results["naive_jobs_s"] = naive_mover(rq_url, pg, ids[:opts.naive_sample])
        slower = min(results["read_limit_jobs_s"], results["copy_limit_rows_s"])
        results["drains"] = {}
        for n, workers in enumerate(opts.workers):
            if n:  # the drain before emptied the backlog: the same jobs again
                rq_url = rs.fresh_database()
                build_backlog(rq_url, opts.jobs)
            target = pg.create_database()
            child = subprocess.run([sys.executable, "-c", CHILD, rq_url, target,
                                    str(opts.batch_size), str(workers)], capture_output=True,
                                   text=True, check=True,
                                   env={**os.environ, "CUTOVER_LOG_LEVEL": "WARNING"})
            run = json.loads(child.stdout.strip().splitlines()[-1])
            pg.drop_database(target)
            run["drain_jobs_s"] = run["moved"] / run["drain_s"]
            run["verify_jobs_s"] = run["verified"] / run["verify_s"]
            run["drain_vs_slower_limit"] = run["drain_jobs_s"] / slower
            run["drain_vs_naive"] = run["drain_jobs_s"] / results["naive_jobs_s"]
            run["verify_vs_drain"] = run["verify_jobs_s"] / run["drain_jobs_s"]
            run["back_jobs_s"] = run["moved_back"] / run["back_s"]
            results["drains"][f"workers={workers}"] = run
            print(f"drain with {workers} worker(s): {run['drain_jobs_s']:,.0f} jobs/s, back "
                  f"to RQ {run['back_jobs_s']:,.0f} jobs/s", file=sys.stderr)
        results["versions"] = {"python": platform.python_version(), "rq": rq.__version__,
                               "procrastinate": procrastinate.__version__,
                               "redis-py": redis.__version__, "psycopg": psycopg.__version__,
                               "servers": f"redis {rs.kind}, postgres {pg.kind}"}
        results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
        text = json.dumps(results, indent=2, default=str)
        print(text)
        if opts.json:
            with open(opts.json, "w") as fh:
                fh.write(text)
    finally:
        rs.stop()
        pg.stop()


if __name__ == "__main__":
    main()
