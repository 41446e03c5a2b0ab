"""Metrics that add up, with real processes and servers: two ``cutover worker`` processes that
are fleet members AND serve ``/metrics``, and a Router in its own process (a producer member).
``cutover status --metrics-from`` both workers must show each number once, equal to what the
tasks themselves wrote (a table ``mark`` inserts into), and the producer's enqueues; each
worker's ``/metrics`` carries the gauges and histogram people chart, and the process and Python
collectors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cutover.control.fleet import HEARTBEAT

APP = "cutover.testing.tasks:registry"
MARK = "cutover.testing.tasks.mark"
JOBS, FAILING = 24, 4

#: The producer: a Router with a control plane (a fleet member heartbeating every 0.3 s),
#: enqueues JOBS ``mark`` jobs (the last FAILING of them fail) to the RQ source, prints their
#: ids, then stays alive (heartbeating) until its stdin closes.
PRODUCER = """
import sys
from cutover import Router
from cutover.testing import tasks
source, dsn, jobs, failing = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
router = Router(tasks.registry, source, dsn, heartbeat=0.3)
ids = [router.enqueue(tasks.mark, dsn, f"job-{i}", fail=i >= jobs - failing)
       for i in range(jobs)]
print(" ".join(str(i) for i in ids), flush=True)
sys.stdin.read()
router.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def truth(dsn: str) -> tuple[int, int]:
    """(succeeded, failed) as the tasks recorded them: one row per execution."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM cutover_runs").fetchall()]
    failed = sum(1 for n in names if int(n.split("-")[1]) >= JOBS - FAILING)
    return len(names) - failed, failed


@pytest.fixture
def fleet(urls: tuple[str, str]) -> Iterator[dict[str, object]]:
    """The running fleet: the workers' ports, the producer's job ids, the URLs and env."""
    redis_url, pg_url = urls
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE cutover_runs (seq serial, name text)")
    env = {**os.environ, "CUTOVER_APP": APP, "CUTOVER_SOURCE": redis_url,
           "CUTOVER_TARGET": pg_url}
    env.pop("CUTOVER_METRICS_FROM", None)
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "cutover", "worker", "--backend", "source", "--poll-interval",
         "0.1", "--isolation", "thread", "--metrics-port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for port in ports]
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, redis_url, pg_url, str(JOBS),
                                 str(FAILING)], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(producer)
    try:
        assert producer.stdout is not None
        ids = producer.stdout.readline().split()
        assert len(ids) == JOBS, producer.communicate(timeout=10)[1]
        yield {"ports": ports, "ids": ids, "env": env}
    finally:
        for proc in procs[:2]:
            proc.send_signal(signal.SIGTERM)
        if producer.stdin is not None:
            producer.stdin.close()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def status(env: dict[str, str], ports: list[int]) -> dict[str, object]:
    args = [sys.executable, "-m", "cutover", "--json", "status"]
    for port in ports:
        args += ["--metrics-from", f"http://127.0.0.1:{port}/metrics"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_status_counts_each_process_once_and_the_producer(fleet: dict[str, object]) -> None:
    env, ports, ids = fleet["env"], fleet["ports"], fleet["ids"]
    assert isinstance(env, dict) and isinstance(ports, list) and isinstance(ids, list)
    pg_url = env["CUTOVER_TARGET"]
    deadline = time.monotonic() + 90
    while sum(truth(pg_url)) < JOBS:  # every job ran once (as the tasks say)
        assert time.monotonic() < deadline, f"ran {truth(pg_url)} of {JOBS}"
        time.sleep(0.2)
    # Past a heartbeat: each worker's fleet snapshot now holds its counts too, as its
    # /metrics does (counted twice before: 2x the truth).
    time.sleep(HEARTBEAT + 1.5)
    succeeded, failed = truth(pg_url)
    assert (succeeded, failed) == (JOBS - FAILING, FAILING)
    doc = status(env, ports)
    view = doc["metrics"]
    assert isinstance(view, dict)
    assert any("fleet member" in s for s in view["sources"]), view["sources"]
    rq = view["backends"]["rq"]
    assert (rq["succeeded"], rq["failed"], rq["retried"]) == (succeeded, failed, 0), view
    assert rq["in_flight"] == 0
    assert rq["jobs_timed"] == JOBS  # the duration histogram: one observation per job
    assert rq["job_p50"] is not None
    # The producer's own process: its enqueues reach status through its heartbeats.
    assert rq["enqueued"] == JOBS
    assert rq["enqueue_errors"] == 0
    assert rq["enqueue_p50"] is not None

    # Each worker's /metrics: the new families, with bounded labels (never a job id), and
    # prometheus_client's process and Python collectors.
    durations = 0.0
    for port in ports:
        families = {f.name: f for f in text_string_to_metric_families(scrape(port))}
        for name in ("process_cpu_seconds", "process_resident_memory_bytes", "python_info",
                     "python_gc_objects_collected"):
            assert name in families, sorted(families)
        for sample in families["cutover_job_duration_seconds"].samples:
            assert set(sample.labels) - {"le"} == {"backend", "queue", "task", "outcome"}
            assert (sample.labels["backend"], sample.labels["queue"], sample.labels["task"]) \
                == ("rq", "default", MARK)
            assert sample.labels["outcome"] in ("succeeded", "failed")
            if sample.name.endswith("_count"):
                durations += sample.value
        queue_jobs = {(s.labels["queue"], s.labels["state"]): s.value
                      for s in families["cutover_queue_jobs"].samples
                      if s.labels["backend"] == "rq"}
        assert queue_jobs[("default", "failed")] == failed
        assert queue_jobs[("default", "waiting")] == 0
        assert queue_jobs[("default", "active")] == 0
        phase = {s.labels["phase"]: s.value for s in families["cutover_phase"].samples}
        assert phase["off"] == 1 and sum(phase.values()) == 1
        assert families["cutover_epoch"].samples[0].value == 0
        assert len(families["cutover_fleet_member_info"].samples) == 1
        labels = {v for f in families.values() for s in f.samples for v in s.labels.values()}
        assert not labels & set(ids)
    assert durations == JOBS
