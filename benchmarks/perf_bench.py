"""Producer and worker performance against each backend's own client and worker, side by side.

    scripts/bench --suite producer,worker [--rounds 3] [--jobs 2000] [--flat 100000]

``producer``: ``Router.enqueue`` against procrastinate's ``task.defer`` and RQ's
``Queue.enqueue`` (one job a call, no-op task), ``Router.enqueue_many`` against
``batch_defer`` / ``Queue.enqueue_many`` (batches of 1,000); rounds interleaved, each way on a
fresh database; rate ratios per round, medians reported. ``flat``: ``Router.enqueue`` latency on
procrastinate from an empty table to ``--flat`` jobs with autovacuum off (the tables are never
analyzed), against ``task.defer`` at the same sizes.

``worker``: the cutover worker (``isolation`` process, the CLI's default, and thread) against
procrastinate's App worker and RQ's ``Worker`` (a fork per job) and ``SimpleWorker``, at
concurrency 1 and 8 (RQ: that many worker processes, as ``rq worker-pool -n 8``), on no-op and
10 ms jobs; burst runs, jobs/s from start to empty queue.

``phases``: the issue's staged cut-over side by side: raw RQ ``Queue.enqueue`` /
``enqueue_many``, raw procrastinate ``defer`` / ``batch_defer``, and ``Router.enqueue`` /
``enqueue_many`` in each phase (off, shadow, live, rampdown, complete; RQ source, Procrastinate
target, control plane in the target's database). ``fence``: procrastinate's worker and RQ's
``SimpleWorker`` against ``cutover worker`` (process isolation) in ``live`` with the fence on
(jobs dual-written by the Router; the worker of one side only) and in ``off`` (no fence).
``backlog``: both workers on a deep backlog, tables analyzed or not (benchmarks/backlog.py).

Servers: ``CUTOVER_TEST_DATABASE_URL`` / ``CUTOVER_TEST_REDIS_URL``, else embedded ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import procrastinate
import psycopg
import redis
import rq

from benchmarks import backlog as backlog_suite
from benchmarks import perf_tasks
from benchmarks.perf_tasks import registry
from cutover import Call, Router, adapters
from cutover.control import ControlPlane, Pair
from cutover.fence import PhaseGate
from cutover.phases import ORDER, Phase, Side, decide, transition
from cutover.testing.servers import PostgresServer, RedisServer
from cutover.worker import Worker

NOOP = "benchmarks.perf_tasks.noop"
SLEEP = "benchmarks.perf_tasks.sleep10"
Rates = dict[str, list[float]]


def _app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    app.task(name=NOOP)(perf_tasks.noop)
    app.task(name=SLEEP)(perf_tasks.sleep10)
    return app


def _rate(n: int, run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


# -- producer ------------------------------------------------------------------------------
def _pg_defer(url: str, n: int) -> float:
    app = _app(url)
    with app.open():
        task = app.tasks[NOOP]
        task.defer(n=-1)  # the pool is open and warm, as in a running application
        return _rate(n, lambda: [task.defer(n=i) for i in range(n)])


def _router_enqueue(url: str, n: int) -> float:
    with Router(registry, source=url) as router:
        router.enqueue(perf_tasks.noop, n=-1)
        return _rate(n, lambda: [router.enqueue(perf_tasks.noop, n=i) for i in range(n)])


def _pg_batch(url: str, n: int) -> float:
    app = _app(url)
    with app.open():
        task = app.tasks[NOOP]
        task.defer(n=-1)
        return _rate(n, lambda: [task.batch_defer(*({"n": i} for i in range(b, b + 1000)))
                                 for b in range(0, n, 1000)])


def _router_many(url: str, n: int) -> float:
    with Router(registry, source=url) as router:
        router.enqueue(perf_tasks.noop, n=-1)
        return _rate(n, lambda: [router.enqueue_many(
            [Call(perf_tasks.noop, kwargs={"n": i}) for i in range(b, b + 1000)])
            for b in range(0, n, 1000)])


def _rq_enqueue(url: str, n: int) -> float:
    queue = rq.Queue(connection=redis.Redis.from_url(url))
    queue.enqueue(perf_tasks.noop, n=-1)
    return _rate(n, lambda: [queue.enqueue(perf_tasks.noop, n=i) for i in range(n)])


def _rq_many(url: str, n: int) -> float:
    queue = rq.Queue(connection=redis.Redis.from_url(url))
    queue.enqueue(perf_tasks.noop, n=-1)
    return _rate(n, lambda: [queue.enqueue_many(
        [rq.Queue.prepare_data(perf_tasks.noop, kwargs={"n": i}) for i in range(b, b + 1000)])
        for b in range(0, n, 1000)])


PRODUCER: dict[str, tuple[str, Callable[[str, int], float]]] = {
    "pg defer": ("pg", _pg_defer), "pg Router.enqueue": ("pg", _router_enqueue),
    "pg batch_defer": ("pg", _pg_batch), "pg Router.enqueue_many": ("pg", _router_many),
    "rq Queue.enqueue": ("rq", _rq_enqueue), "rq Router.enqueue": ("rq", _router_enqueue),
    "rq enqueue_many": ("rq", _rq_many), "rq Router.enqueue_many": ("rq", _router_many),
}
PRODUCER_PAIRS = [("pg Router.enqueue", "pg defer"),
                  ("pg Router.enqueue_many", "pg batch_defer"),
                  ("rq Router.enqueue", "rq Queue.enqueue"),
                  ("rq Router.enqueue_many", "rq enqueue_many")]


def _flat(pg: PostgresServer, total: int, block: int = 1000) -> dict[str, Any]:
    """Latency (ms a call, median of blocks) near 0 jobs and near ``total`` jobs, tables
    never analyzed; defer measured in the same database at the same sizes."""
    url = pg.create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("procrastinate_jobs", "cutover_jobs", "cutover_departed"):
                conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
            analyzed = conn.execute(
                "SELECT count(*) FROM pg_stat_user_tables WHERE relname IN "
                "('procrastinate_jobs', 'cutover_jobs') AND (last_analyze IS NOT NULL OR "
                "last_autoanalyze IS NOT NULL)").fetchone()
        app = _app(url)
        out: dict[str, Any] = {"analyzed_tables": analyzed[0] if analyzed else None}
        with app.open(), Router(registry, source=url) as router:
            task = app.tasks[NOOP]

            def ms(run: Callable[[int], object]) -> float:
                start = time.perf_counter()
                for i in range(block):
                    run(i)
                return (time.perf_counter() - start) / block * 1000

            def enqueue(i: int) -> object:
                return router.enqueue(perf_tasks.noop, n=i)

            def defer(i: int) -> object:
                return task.defer(n=i)

            out["start_router_ms"] = statistics.median(ms(enqueue) for _ in range(3))
            out["start_defer_ms"] = statistics.median(ms(defer) for _ in range(3))
            done = 6 * block
            while done < total - 6 * block:
                for _ in range(block):
                    router.enqueue(perf_tasks.noop, n=done)
                    done += 1
            out["end_router_ms"] = statistics.median(ms(enqueue) for _ in range(3))
            out["end_defer_ms"] = statistics.median(ms(defer) for _ in range(3))
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()
        out["jobs_at_end"] = row[0] if row else None
        return out
    finally:
        pg.drop_database(url)


# -- worker --------------------------------------------------------------------------------
def _native_pg(url: str, task: str, n: int, c: int) -> float:
    app = _app(url)
    with app.open():
        for b in range(0, n, 1000):
            app.tasks[task].batch_defer(*({"n": i} for i in range(b, min(n, b + 1000))))
    return _rate(n, lambda: app.run_worker(wait=False, install_signal_handlers=False,
                                           listen_notify=False, concurrency=c))


def _rq_fill(url: str, task: str, n: int) -> None:
    queue = rq.Queue(connection=redis.Redis.from_url(url))
    func = perf_tasks.noop if task == NOOP else perf_tasks.sleep10
    for b in range(0, n, 1000):
        queue.enqueue_many([rq.Queue.prepare_data(func, kwargs={"n": i})
                            for i in range(b, min(n, b + 1000))])


def _rq_work(url: str, kind: str) -> None:
    cls = rq.SimpleWorker if kind == "simple" else rq.Worker
    cls(["default"], connection=redis.Redis.from_url(url)).work(burst=True,
                                                                logging_level="WARNING")


def _native_rq(kind: str) -> Callable[[str, str, int, int], float]:
    def run(url: str, task: str, n: int, c: int) -> float:
        _rq_fill(url, task, n)
        ctx = multiprocessing.get_context("fork")

        def go() -> None:
            procs = [ctx.Process(target=_rq_work, args=(url, kind)) for _ in range(c)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        return _rate(n, go)
    return run


def _cutover(isolation: str) -> Callable[[str, str, int, int], float]:
    def run(url: str, task: str, n: int, c: int) -> float:
        with Router(registry, source=url) as router:
            for b in range(0, n, 1000):
                router.enqueue_many([Call(task, kwargs={"n": i})
                                     for i in range(b, min(n, b + 1000))])
        backend = adapters.open_backend(url)
        try:
            worker = Worker(backend, registry, burst=True, concurrency=c,
                            isolation=isolation)  # type: ignore[arg-type]
            rate = _rate(n, lambda: worker.run(install_signal_handlers=False))
            assert worker.report.succeeded == n, worker.report
            return rate
        finally:
            backend.close()
    return run


WORKERS: dict[str, tuple[str, Callable[[str, str, int, int], float]]] = {
    "pg procrastinate": ("pg", _native_pg),
    "pg cutover process": ("pg", _cutover("process")),
    "pg cutover thread": ("pg", _cutover("thread")),
    "rq Worker": ("rq", _native_rq("fork")),
    "rq SimpleWorker": ("rq", _native_rq("simple")),
    "rq cutover process": ("rq", _cutover("process")),
    "rq cutover thread": ("rq", _cutover("thread")),
}
WORKER_PAIRS = [("pg cutover process", "pg procrastinate"),
                ("pg cutover thread", "pg procrastinate"),
                ("rq cutover process", "rq Worker"), ("rq cutover process", "rq SimpleWorker"),
                ("rq cutover thread", "rq Worker"), ("rq cutover thread", "rq SimpleWorker")]


# -- the staged cut-over: the Router per phase, the fenced worker in live ---------------------
def _stage(source: str, target: str, phase: Phase) -> None:
    """A control plane in the target's database, walked (forced, as ``phase set``) to
    ``phase``; the pair is RQ (source) -> Procrastinate (target)."""
    plane = ControlPlane(target)
    backends = [adapters.open_backend(source), adapters.open_backend(target)]
    try:
        plane.init()
        sid, tid = (b.identity() for b in backends)
        pair = Pair(sid.key, sid.url, tid.key, tid.url)
        while (state := plane.read_phase()).phase.step < phase.step:
            move = transition(state.phase, ORDER[state.phase.step + 1])
            plane.transition(decide(move, {}, force=True, why="bench"), why="bench", pair=pair,
                             kind="set")
    finally:
        plane.close()
        for b in backends:
            b.close()


def _phase_router(phase: Phase, many: bool) -> Callable[[str, str, int], float]:
    """``Router.enqueue`` (or ``enqueue_many``, batches of 1,000) in ``phase``, RQ -> PG."""
    def run(source: str, target: str, n: int) -> float:
        _stage(source, target, phase)
        with Router(registry, source=source, target=target) as router:
            assert router.phase is phase, router.phase
            router.enqueue(perf_tasks.noop, n=-1)  # connections open, the phase read
            if many:
                return _rate(n, lambda: [router.enqueue_many(
                    [Call(perf_tasks.noop, kwargs={"n": i}) for i in range(b, b + 1000)])
                    for b in range(0, n, 1000)])
            return _rate(n, lambda: [router.enqueue(perf_tasks.noop, n=i) for i in range(n)])
    return run


def _raw(run: Callable[[str, int], float], kind: str) -> Callable[[str, str, int], float]:
    """A native client's way, on the pair's store of ``kind``."""
    return lambda source, target, n: run(target if kind == "pg" else source, n)


PHASES: dict[str, Callable[[str, str, int], float]] = {
    "rq Queue.enqueue": _raw(_rq_enqueue, "rq"), "pg defer": _raw(_pg_defer, "pg"),
    **{f"Router {p.value}": _phase_router(p, False) for p in ORDER},
    "rq enqueue_many": _raw(_rq_many, "rq"), "pg batch_defer": _raw(_pg_batch, "pg"),
    **{f"Router {p.value} many": _phase_router(p, True) for p in ORDER},
}
#: (ours, theirs): the issue's targets (dual write: shadow and live) and the one-side phases
#: against the backend they write.
PHASE_PAIRS = [
    ("Router off", "rq Queue.enqueue"),
    ("Router shadow", "pg defer"), ("Router shadow", "rq Queue.enqueue"),
    ("Router live", "pg defer"), ("Router live", "rq Queue.enqueue"),
    ("Router rampdown", "pg defer"), ("Router complete", "pg defer"),
    ("Router off many", "rq enqueue_many"),
    ("Router shadow many", "pg batch_defer"), ("Router live many", "pg batch_defer"),
    ("Router rampdown many", "pg batch_defer"), ("Router complete many", "pg batch_defer"),
]


def _fenced(side: Side) -> Callable[[str, str, str, int, int], float]:
    """``cutover worker`` (process isolation, the CLI's default) in ``live`` on ``side``, fence
    on: jobs dual-written by the Router in live (a copy on each side; no worker on the other)."""
    def run(source: str, target: str, task: str, n: int, c: int) -> float:
        _stage(source, target, Phase.LIVE)
        with Router(registry, source=source, target=target) as router:
            for b in range(0, n, 1000):
                router.enqueue_many([Call(task, kwargs={"n": i})
                                     for i in range(b, min(n, b + 1000))])
        url = source if side is Side.SOURCE else target
        backend, other = adapters.open_backend(url), adapters.open_backend(
            target if side is Side.SOURCE else source)
        plane = ControlPlane(target)
        gate = PhaseGate(plane, backend, side, source=other if side is Side.TARGET else None)
        try:
            worker = Worker(backend, registry, burst=True, concurrency=c, isolation="process",
                            gate=gate)
            rate = _rate(n, lambda: worker.run(install_signal_handlers=False))
            assert worker.report.succeeded == n, worker.report
            return rate
        finally:
            gate.close()
            plane.close()
            backend.close()
            other.close()
    return run


def _one_store(run: Callable[[str, str, int, int], float],
               kind: str) -> Callable[[str, str, str, int, int], float]:
    return lambda source, target, task, n, c: run(target if kind == "pg" else source, task, n, c)


FENCE: dict[str, Callable[[str, str, str, int, int], float]] = {
    "pg procrastinate": _one_store(_native_pg, "pg"),
    "pg cutover off": _one_store(_cutover("process"), "pg"),
    "pg cutover live": _fenced(Side.TARGET),
    "rq SimpleWorker": _one_store(_native_rq("simple"), "rq"),
    "rq cutover off": _one_store(_cutover("process"), "rq"),
    "rq cutover live": _fenced(Side.SOURCE),
}
FENCE_PAIRS = [("pg cutover live", "pg procrastinate"), ("pg cutover live", "pg cutover off"),
               ("rq cutover live", "rq SimpleWorker"), ("rq cutover live", "rq cutover off")]


# -- running -------------------------------------------------------------------------------
class Stores:
    def __init__(self) -> None:
        self.pg, self.rs = PostgresServer(), RedisServer(databases=1)

    def fresh(self, kind: str) -> str:
        return self.pg.create_database() if kind == "pg" else self.rs.fresh_database()

    def release(self, kind: str, url: str) -> None:
        if kind == "pg":
            self.pg.drop_database(url)

    def close(self) -> None:
        self.rs.stop()
        self.pg.stop()


def _pair_once(stores: Stores, run: Callable[..., float], *args: Any) -> float:
    """``run(redis_url, pg_url, *args)`` on a fresh pair of stores."""
    source, target = stores.fresh("rq"), stores.fresh("pg")
    try:
        return float(run(source, target, *args))
    finally:
        stores.release("pg", target)


def _once(stores: Stores, kind: str, run: Callable[..., float], *args: Any) -> float:
    """``run(url, *args)`` on a fresh store of ``kind``."""
    url = stores.fresh(kind)
    try:
        return float(run(url, *args))
    finally:
        stores.release(kind, url)


def _summary(rates: Rates, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rates": {k: statistics.median(v) for k, v in rates.items() if v}}
    for ours, theirs in pairs:
        if rates.get(ours) and rates.get(theirs):
            ratios = [a / b for a, b in zip(rates[ours], rates[theirs], strict=True)]
            out[f"{ours} / {theirs}"] = {"median": statistics.median(ratios),
                                         "rounds": [round(r, 2) for r in ratios]}
    return out


def producer(stores: Stores, rounds: int, jobs: int) -> dict[str, Any]:
    rates: Rates = {way: [] for way in PRODUCER}
    for r in range(rounds):
        ways = list(PRODUCER.items())
        for way, (kind, run) in (ways if r % 2 == 0 else ways[::-1]):
            n = jobs * 5 if "many" in way or "batch" in way else jobs
            rates[way].append(_once(stores, kind, run, n))
            print(f"  producer round {r + 1}: {way:<24} {rates[way][-1]:8.0f} jobs/s",
                  file=sys.stderr)
    return _summary(rates, PRODUCER_PAIRS)


def worker(stores: Stores, rounds: int, jobs: int, concurrency: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task, n in ((NOOP, jobs), (SLEEP, max(200, jobs // 4))):
        for c in concurrency:
            rates: Rates = {way: [] for way in WORKERS}
            count = n if task == NOOP else n * c
            for r in range(rounds):
                ways = list(WORKERS.items())
                for way, (kind, run) in (ways if r % 2 == 0 else ways[::-1]):
                    rates[way].append(_once(stores, kind, run, task, count, c))
                    print(f"  worker {task.rsplit('.', 1)[1]} c={c} round {r + 1}: {way:<20} "
                          f"{rates[way][-1]:8.0f} jobs/s", file=sys.stderr)
            out[f"{task.rsplit('.', 1)[1]} c={c}"] = _summary(rates, WORKER_PAIRS)
    return out


def phases(stores: Stores, rounds: int, jobs: int) -> dict[str, Any]:
    """The Router in each phase against the raw clients, interleaved, one fresh pair a way."""
    rates: Rates = {way: [] for way in PHASES}
    for r in range(rounds):
        ways = list(PHASES.items())
        for way, run in (ways if r % 2 == 0 else ways[::-1]):
            n = jobs * 5 if "many" in way or "batch" in way else jobs
            rates[way].append(_pair_once(stores, run, n))
            print(f"  phases round {r + 1}: {way:<24} {rates[way][-1]:8.0f} jobs/s",
                  file=sys.stderr)
    return _summary(rates, PHASE_PAIRS)


def fence(stores: Stores, rounds: int, jobs: int, concurrency: list[int]) -> dict[str, Any]:
    """Raw workers against ``cutover worker`` in live (fence on) and off, no-op jobs."""
    out: dict[str, Any] = {}
    for c in concurrency:
        rates: Rates = {way: [] for way in FENCE}
        for r in range(rounds):
            ways = list(FENCE.items())
            for way, run in (ways if r % 2 == 0 else ways[::-1]):
                rates[way].append(_pair_once(stores, run, NOOP, jobs, c))
                print(f"  fence c={c} round {r + 1}: {way:<20} {rates[way][-1]:8.0f} jobs/s",
                      file=sys.stderr)
        out[f"noop c={c}"] = _summary(rates, FENCE_PAIRS)
    return out


def markdown(results: dict[str, Any]) -> str:
    """The ratios of a run as the tables of benchmarks/RESULTS.md."""
    lines: list[str] = []

    def table(title: str, block: dict[str, Any]) -> None:
        lines.extend([f"**{title}**", "", "| | median ratio | per round |", "|---|---:|---|"])
        for key, value in block.items():
            if key != "rates":
                lines.append(f"| {key} | {value['median']:.2f} | "
                             + ", ".join(f"{r:.2f}" for r in value["rounds"]) + " |")
        lines.extend(["", "rates (median jobs/s): " + ", ".join(
            f"{k} {v:.0f}" for k, v in block["rates"].items()), ""])

    if "producer" in results:
        table("producer", results["producer"])
    if "flat" in results:
        f = results["flat"]
        lines.extend(["**flat** (ms a call, never-analyzed tables)", "",
                      "| | at 0 jobs | at " + f"{f['jobs_at_end']:,}" + " jobs |",
                      "|---|---:|---:|",
                      f"| Router.enqueue | {f['start_router_ms']:.2f} | {f['end_router_ms']:.2f} |",
                      f"| defer | {f['start_defer_ms']:.2f} | {f['end_defer_ms']:.2f} |", ""])
    for name, block in results.get("worker", {}).items():
        table(f"worker, {name}", block)
    if "phases" in results:
        table("Router per phase (RQ source -> Procrastinate target)", results["phases"])
    for name, block in results.get("fence", {}).items():
        table(f"worker in live, fence on, {name}", block)
    for name, block in results.get("backlog", {}).items():
        table(f"worker on a backlog of {name}", block)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="producer,worker",
                        help="comma-separated: producer, flat, worker, phases, fence, backlog")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--flat", type=int, default=100_000, help="jobs for the flat suite")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--backlogs", default="2000,20000", help="sizes for the backlog suite")
    parser.add_argument("--json", default=None)
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cutover").setLevel(logging.WARNING)
    suites = opts.suite.split(",")
    results: dict[str, Any] = {
        "command": " ".join(sys.argv), "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus {platform.platform()}",
        "versions": {"rq": rq.__version__, "procrastinate": procrastinate.__version__,
                     "psycopg": psycopg.__version__, "redis-py": redis.__version__}}
    stores = Stores()
    try:
        if "producer" in suites:
            results["producer"] = producer(stores, opts.rounds, opts.jobs)
        if "flat" in suites:
            results["flat"] = _flat(stores.pg, opts.flat)
        if "worker" in suites:
            results["worker"] = worker(stores, opts.rounds, opts.jobs,
                                       [int(c) for c in opts.concurrency.split(",")])
        if "phases" in suites:
            results["phases"] = phases(stores, opts.rounds, opts.jobs)
        if "fence" in suites:
            results["fence"] = fence(stores, opts.rounds, opts.jobs,
                                     [int(c) for c in opts.concurrency.split(",")])
        if "backlog" in suites:
            results["backlog"] = backlog_suite.backlog(
                lambda: stores.fresh("pg"), lambda url: stores.release("pg", url), opts.rounds,
                [int(n) for n in opts.backlogs.split(",")], _rate, _app, _summary)
    finally:
        stores.close()
    text = json.dumps(results, indent=1)
    print(text)
    print(markdown(results), file=sys.stderr)
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
