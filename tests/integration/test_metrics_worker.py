"""``cutover worker --metrics-port``: the worker's own process serves Prometheus text over HTTP,
and the counts are the jobs it ran (against real Redis and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cutover import adapters
from cutover.metrics import Metrics
from cutover.testing import tasks
from cutover.testing.tasks import registry
from cutover.worker import Worker

APP = "cutover.testing.tasks:registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, str], float]:
    """(sample name, backend label) -> value, from /metrics over HTTP."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, s.labels.get("backend", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if "le" not in s.labels}


@pytest.mark.parametrize("kind", ["rq", "procrastinate"])
def test_worker_serves_the_outcomes_it_caused(kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("cutover_redis_url" if kind == "rq"
                                  else "cutover_database_url")
    backend = adapters.open_backend(url)
    try:
        records = ([registry.make_record(tasks.add, (i, i)) for i in range(3)]
                   + [registry.make_record(tasks.boom, ("metrics",)) for _ in range(2)]
                   + [registry.make_record(tasks.slow_retry, ())])
        backend.enqueue(records)
        name = backend.name
    finally:
        backend.close()
    port = free_port()
    env = {**os.environ, "CUTOVER_APP": APP, "CUTOVER_SOURCE": url,
           "CUTOVER_METRICS_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "cutover", "worker", "--backend", "source",
                             "--poll-interval", "0.1", "--isolation", "thread"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wanted = {("cutover_succeeded_total", name): 3.0, ("cutover_failed_total", name): 2.0,
                  ("cutover_retried_total", name): 1.0, ("cutover_jobs_in_flight", name): 0.0}
        seen: dict[tuple[str, str], float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                seen = scrape(port)
            except OSError:
                seen = {}  # not listening yet
            if all(seen.get(k) == v for k, v in wanted.items()):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"metrics never showed {wanted}; last scrape: {seen}")
        # The retried job waits 30 s for its second attempt: nothing else happened.
        assert seen[("cutover_enqueue_errors_total", name)] == 0
        assert ("cutover_enqueue_latency_seconds_count", name) in seen
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"metrics at http://127.0.0.1:{port}/metrics" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_taken_metrics_port_exits_2_naming_it(cutover_redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "cutover", "--app", APP, "--source", cutover_redis_url,
             "worker", "--backend", "source", "--burst", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr


def test_a_running_job_is_in_flight_until_its_outcome_is_recorded() -> None:
    backend = adapters.open_backend("memory://metrics-in-flight")
    backend.enqueue([registry.make_record(tasks.sleepy, (0.5,))])
    mine = Metrics()
    worker = Worker(backend, registry, burst=True, isolation="thread", metrics=mine)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while mine.snapshot()["backends"].get("memory", {}).get("in_flight") != 1:
            assert time.monotonic() < deadline, "the job never showed in flight"
            time.sleep(0.01)
        assert mine.snapshot()["backends"]["memory"]["succeeded"] == 0
    finally:
        thread.join(timeout=30)
        backend.close()
    done = mine.snapshot()["backends"]["memory"]
    assert (done["in_flight"], done["succeeded"]) == (0, 1)
