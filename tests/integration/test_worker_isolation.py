"""The worker survives whatever a task does: BaseExceptions, hangs, busy loops, a dead process.

Run on every installed backend (memory, RQ, procrastinate) and with both isolations.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from cutover_rq import RQBackend

from cutover.backend import QueueBackend
from cutover.logs import JsonFormatter
from cutover.record import JobState
from cutover.worker import Isolation, Worker
from tests.integration import worker_tasks
from tests.integration.worker_tasks import registry

POISON = ("w.exit", "w.interrupt", "w.cancelled", "w.generator_exit")
POISON_ERRORS = {"w.exit": "SystemExit: 0", "w.interrupt": "KeyboardInterrupt",
                 "w.cancelled": "CancelledError", "w.generator_exit": "GeneratorExit"}


def burst(backend: QueueBackend, isolation: Isolation, **options: object) -> Worker:
    worker = Worker(backend, registry, burst=True, poll_interval=0.05, isolation=isolation,
                    **options)  # type: ignore[arg-type]
    worker.run(install_signal_handlers=False)
    return worker


@pytest.fixture
def caught() -> Iterator[list[logging.LogRecord]]:
    """The worker's log records (the cutover logger may not propagate to pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("cutover.worker")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_a_task_raising_any_base_exception_fails_its_job_and_the_worker_goes_on(
        cutover_backend: QueueBackend, isolation: Isolation,
        caught: list[logging.LogRecord]) -> None:
    normal = [registry.make_record("w.double", (i,)) for i in range(6)]
    poison = {name: registry.make_record(name) for name in POISON}
    # The poison jobs sit between normal ones: every job behind them must still run.
    cutover_backend.enqueue([normal[0], poison["w.exit"], normal[1], poison["w.interrupt"],
                             normal[2], poison["w.cancelled"], normal[3],
                             poison["w.generator_exit"], normal[4], normal[5]])
    report = burst(cutover_backend, isolation).report
    assert (report.succeeded, report.failed, report.retried) == (6, 4, 0)
    for i, record in enumerate(normal):
        done = cutover_backend.get(record.id)
        assert done is not None and done.state is JobState.FINISHED and done.result == 2 * i
    for name, record in poison.items():
        done = cutover_backend.get(record.id)
        assert done is not None and done.state is JobState.FAILED, name
        assert done.error is not None and "Traceback (most recent call last)" in done.error
        assert POISON_ERRORS[name] in done.error.splitlines()[-1]
    failures = [r for r in caught if getattr(r, "event", None) == "failed"]
    assert len(failures) == 4
    assert all("Traceback (most recent call last)" in r.traceback for r in failures)  # type: ignore[attr-defined]
    doc = json.loads(JsonFormatter().format(failures[0]))
    assert "Traceback (most recent call last)" in doc["traceback"]


def test_a_task_that_kills_its_process_fails_its_job(cutover_backend: QueueBackend) -> None:
    dead, after = registry.make_record("w.die"), registry.make_record("w.double", (21,))
    cutover_backend.enqueue([dead, after])
    report = burst(cutover_backend, "process").report
    assert (report.succeeded, report.failed) == (1, 1)
    done = cutover_backend.get(dead.id)
    assert done is not None and done.state is JobState.FAILED
    assert done.error is not None and "exit code 3" in done.error
    assert cutover_backend.get(after.id).result == 42  # type: ignore[union-attr]


@pytest.mark.parametrize("task", ["w.hang", "w.spin"])
def test_a_hung_task_is_stopped_at_its_timeout_and_the_worker_goes_on(
        cutover_backend: QueueBackend, task: str) -> None:
    hung = registry.make_record(task)  # the task's own limit: 1 s
    others = [registry.make_record("w.double", (i,)) for i in range(3)]
    cutover_backend.enqueue([hung, *others])
    started = time.monotonic()
    report = burst(cutover_backend, "process").report
    elapsed = time.monotonic() - started
    assert elapsed < 1 + 3, elapsed  # the limit plus a little slack for the claims and a fork
    assert (report.succeeded, report.failed) == (3, 1)
    done = cutover_backend.get(hung.id)
    assert done is not None and done.state is JobState.FAILED
    assert done.error is not None and "JobTimeoutError" in done.error and "1s" in done.error


def test_the_worker_timeout_applies_to_tasks_without_their_own(
        cutover_backend: QueueBackend) -> None:
    slow, quick = registry.make_record("w.sleep", (30,)), registry.make_record("w.sleep", (0,))
    cutover_backend.enqueue([slow, quick])
    started = time.monotonic()
    report = burst(cutover_backend, "process", timeout=0.5).report
    assert time.monotonic() - started < 0.5 + 3
    assert (report.succeeded, report.failed) == (1, 1)
    assert "JobTimeoutError" in (cutover_backend.get(slow.id).error or "")  # type: ignore[union-attr]


def test_thread_isolation_fails_a_job_past_its_timeout_and_stops_the_worker(
        cutover_backend: QueueBackend) -> None:
    worker_tasks.release.clear()
    stuck = registry.make_record("w.sleep_until_released")  # limit 0.5 s
    later = registry.make_record("w.double", (1,))
    cutover_backend.enqueue([stuck, later])
    started = time.monotonic()
    try:
        worker = Worker(cutover_backend, registry, poll_interval=0.05, isolation="thread")
        report = worker.run(install_signal_handlers=False)
        elapsed = time.monotonic() - started
    finally:
        worker_tasks.release.set()
    assert elapsed < 0.5 + 2, elapsed
    assert report.abandoned == [stuck.id] and report.failed == 1
    done = cutover_backend.get(stuck.id)
    assert done is not None and done.state is JobState.FAILED
    assert "JobTimeoutError" in (done.error or "")
    # The worker stopped for a restart: the next job waits for the next worker.
    assert cutover_backend.get(later.id).state is JobState.QUEUED  # type: ignore[union-attr]


@pytest.mark.rq
def test_the_cli_worker_survives_a_poison_pill_and_exits_0(cutover_redis_url: str) -> None:
    backend = RQBackend(cutover_redis_url)
    jobs = [registry.make_record("w.double", (1,)), registry.make_record("w.exit"),
            registry.make_record("w.double", (2,))]
    backend.enqueue(jobs)
    done = subprocess.run(
        [sys.executable, "-m", "cutover", "--app", "tests.integration.worker_tasks:registry",
         "--json", "worker", "--backend", cutover_redis_url, "--burst", "--poll-interval",
         "0.05"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["succeeded"], summary["failed"]) == (2, 1)
    assert "SystemExit" in done.stderr and "Traceback (most recent call last)" in done.stderr
    assert backend.get(jobs[1].id).state is JobState.FAILED  # type: ignore[union-attr]
    backend.close()


def test_log_lines_carry_the_traceback_in_text_format() -> None:
    from cutover import InMemoryBackend, logs

    stream = io.StringIO()
    logger = logging.getLogger("cutover")
    logs.setup("INFO", "text")
    handler = logger.handlers[-1]
    try:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        backend = InMemoryBackend()
        backend.enqueue([registry.make_record("w.boom", ("secret postgresql://u:pw@h/db",))])
        burst(backend, "thread")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = stream.getvalue()
    assert "Traceback (most recent call last)" in text and "ValueError: secret" in text
    assert "pw@" not in text


def test_the_cli_worker_in_thread_isolation_exits_3_naming_a_timed_out_job() -> None:
    from click.testing import CliRunner

    from cutover import InMemoryBackend
    from cutover.cli import cli

    worker_tasks.release.clear()
    memory = InMemoryBackend("memory://worker-abandoned")
    memory.flush()
    stuck = registry.make_record("w.sleep_until_released")  # limit 0.5 s
    memory.enqueue([stuck])
    try:
        result = CliRunner().invoke(cli, [
            "--app", "tests.integration.worker_tasks:registry", "--source",
            "memory://worker-abandoned", "--json", "worker", "--backend", "memory",
            "--isolation", "thread", "--poll-interval", "0.05"])
    finally:
        worker_tasks.release.set()
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)["abandoned"] == [stuck.id]
    assert memory.get(stuck.id).state is JobState.FAILED  # type: ignore[union-attr]


def test_a_job_moved_off_rq_keeps_its_rq_timeout(cutover_backend: QueueBackend) -> None:
    record = registry.make_record("w.sleep", (30,)).replace(native={"rq": {"timeout": 1}})
    cutover_backend.enqueue([record])
    started = time.monotonic()
    report = burst(cutover_backend, "process", timeout=60).report
    assert time.monotonic() - started < 1 + 3
    assert report.failed == 1
    assert "timeout of 1s" in (cutover_backend.get(record.id).error or "")  # type: ignore[union-attr]


@pytest.mark.parametrize("first", [None, "w.fork_helper"])
def test_a_dead_or_timed_out_job_is_seen_at_once_even_when_a_forked_helper_outlives_it(
        cutover_backend: QueueBackend, first: str | None) -> None:
    # A helper the task (or an earlier job in the same child) forked keeps the child's pipe
    # and sentinel open: the death must still be seen at once, not at the timeout (or never,
    # with no timeout), and a kill must not wait for the helper.
    helper = 20.0
    records = [registry.make_record(first, (helper,))] if first else []
    dead = registry.make_record("w.fork_and_die", (helper,))
    hung = registry.make_record("w.hang")  # its own limit: 1 s
    after = registry.make_record("w.double", (21,))
    cutover_backend.enqueue([*records, dead, hung, after])
    started = time.monotonic()
    report = burst(cutover_backend, "process", timeout=0).report
    elapsed = time.monotonic() - started
    assert elapsed < 1 + 3, elapsed
    assert (report.succeeded, report.failed) == (1 + len(records), 2)
    done = cutover_backend.get(dead.id)
    assert done is not None and done.state is JobState.FAILED
    assert done.error is not None and "WorkerProcessDied" in done.error, done.error
    assert "exit code 3" in done.error
    timed_out = cutover_backend.get(hung.id)
    assert timed_out is not None and "JobTimeoutError" in (timed_out.error or "")
    assert cutover_backend.get(after.id).result == 42  # type: ignore[union-attr]


@pytest.mark.rq
def test_a_job_that_kills_a_thread_isolated_worker_is_not_run_again_forever(
        cutover_redis_url: str) -> None:
    backend = RQBackend(cutover_redis_url)
    poison = registry.make_record("w.die")  # one attempt
    backend.enqueue([poison])
    command = [sys.executable, "-m", "cutover", "--app", "tests.integration.worker_tasks:registry",
               "worker", "--backend", cutover_redis_url, "--burst", "--isolation", "thread",
               "--stalled-after", "1", "--poll-interval", "0.05"]
    runs = 0
    try:
        for _ in range(3):
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
            runs += "started job " + poison.id in done.stderr
            time.sleep(1.2)  # its worker's heartbeat is stale: the next worker recovers it
        assert runs == 1, f"a one-attempt job ran {runs} times"
        found = backend.get(poison.id)
        assert found is not None and found.state is JobState.FAILED
        assert found.error is not None
        assert "its worker died while running it (attempt 1 of 1)" in found.error
    finally:
        backend.close()
