"""The command line, in-process (CliRunner) and as a real process receiving signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cutover_rq import RQBackend

from cutover import InMemoryBackend
from cutover.cli import cli
from cutover.record import JobRecord, JobState
from cutover.testing import tasks
from cutover.testing.tasks import registry

APP = "cutover.testing.tasks:registry"


def test_help_explains_the_tool_and_the_worker() -> None:
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for word in ("--source", "CUTOVER_SOURCE", "--target", "--app", "--json", "Exit codes",
                 "worker"):
        assert word in top.output
    worker = runner.invoke(cli, ["worker", "--help"])
    assert worker.exit_code == 0
    for word in ("--backend", "--queue", "--concurrency", "CUTOVER_WORKER_CONCURRENCY",
                 "--burst", "SIGTERM"):
        assert word in worker.output


def test_burst_worker_runs_jobs_and_prints_json() -> None:
    tasks.reset()
    memory = InMemoryBackend("memory://cli-burst")
    memory.flush()
    memory.enqueue([registry.make_record(tasks.add, (1, 2)),
                    registry.make_record(tasks.boom, ())])
    result = CliRunner().invoke(cli, ["--app", APP, "--source", "memory://cli-burst", "--json",
                                      "worker", "--backend", "memory", "--burst",
                                      "--isolation", "thread"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["succeeded"] == 1 and summary["failed"] == 1
    # In-process (thread isolation): the task's side effects are visible here.
    assert tasks.calls[0] == ("add", {"a": 1, "b": 2})


def test_environment_fallbacks_are_used() -> None:
    memory = InMemoryBackend("memory://cli-env")
    memory.flush()
    memory.enqueue([registry.make_record(tasks.add, (1, 1))])
    result = CliRunner().invoke(cli, ["worker", "--backend", "source", "--burst"],
                                env={"CUTOVER_APP": APP, "CUTOVER_SOURCE": "memory://cli-env",
                                     "CUTOVER_WORKER_CONCURRENCY": "2"})
    assert result.exit_code == 0, result.output
    assert "succeeded 1" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["worker", "--backend", "rq", "--burst"], "--app"),
        (["--app", "nowhere.mod:reg", "--source", "memory://", "worker", "--backend", "memory"],
         "cannot import"),
        (["--app", "cutover.testing.tasks:add", "--source", "memory://", "worker", "--backend",
          "memory"], "not a cutover.TaskRegistry"),
        (["--app", APP, "--source", "redsi://:pw@h/0", "worker", "--backend", "source"],
         "did you mean redis://"),
        (["--app", APP, "--source", "memory://", "worker", "--backend", "rq"],
         "neither --source nor --target is a rq URL"),
    ],
)
def test_configuration_errors_exit_2_with_a_clear_message(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert ":pw@" not in result.output


def test_unreachable_backend_error_hides_the_password() -> None:
    result = CliRunner().invoke(cli, ["--app", APP, "--source",
                                      "redis://:hunter2@127.0.0.1:1/0", "worker", "--backend",
                                      "rq", "--burst"])
    assert result.exit_code == 2
    assert "unreachable" in result.output and "hunter2" not in result.output


def _wait_until_started(backend: RQBackend, record: JobRecord) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = backend.get(record.id)
        if current is not None and current.state is JobState.STARTED:
            return
        time.sleep(0.05)
    pytest.fail("the worker never started the job")


@pytest.mark.rq
@pytest.mark.parametrize("to_group", [False, True], ids=["SIGTERM", "Ctrl-C to the group"])
def test_sigterm_finishes_the_running_job_then_exits(cutover_redis_url: str,
                                                     to_group: bool) -> None:
    """Also when the whole process group gets it (Ctrl-C in a terminal, a cgroup's SIGTERM): the
    child process running the job ignores it, the worker decides."""
    backend = RQBackend(cutover_redis_url)
    record = registry.make_record(tasks.sleepy, (2.0,))
    backend.enqueue([record])
    env = {**os.environ, "CUTOVER_APP": APP, "CUTOVER_SOURCE": cutover_redis_url}
    proc = subprocess.Popen([sys.executable, "-m", "cutover", "--log-format", "json", "worker",
                             "--backend", "rq", "--poll-interval", "0.1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=to_group)
    try:
        _wait_until_started(backend, record)
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    done = backend.get(record.id)
    assert done is not None and done.state is JobState.FINISHED
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    lifecycle = [e.get("event") for e in events if e.get("job_id") == record.id]
    assert lifecycle == ["started", "succeeded"]
    assert any(("SIGINT" if to_group else "SIGTERM") in e["message"] for e in events)
    backend.close()


@pytest.mark.rq
def test_a_second_sigterm_exits_at_once_with_the_interrupted_code(cutover_redis_url: str
                                                                  ) -> None:
    """2 (an interrupted command, as the drain's second signal), never 1: verify's "found loss"."""
    backend = RQBackend(cutover_redis_url)
    record = registry.make_record(tasks.sleepy, (30.0,))
    backend.enqueue([record])
    env = {**os.environ, "CUTOVER_APP": APP, "CUTOVER_SOURCE": cutover_redis_url}
    proc = subprocess.Popen([sys.executable, "-m", "cutover", "worker", "--backend", "rq",
                             "--poll-interval", "0.1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_started(backend, record)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)  # well before the 30 s job would end
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    assert "got SIGTERM again: exiting now" in err
    backend.close()


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("import nowhere_at_all\n", "ModuleNotFoundError: No module named 'nowhere_at_all'"),
        ("def broken(:\n", "SyntaxError: "),
        ("raise RuntimeError('settings missing: DATABASE_URL')\n",
         "RuntimeError: settings missing: DATABASE_URL"),
        ("import sys\nsys.exit(4)\n", "SystemExit: 4"),
    ],
)
def test_an_app_module_that_fails_to_import_exits_2_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str,
        error: str) -> None:
    name = f"broken_app_{abs(hash(source))}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["--app", f"{name}:registry", "--source", "memory://",
                                      "worker", "--backend", "memory", "--burst"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: --app '{name}:registry': cannot import '{name}': ")
    assert error in lines[0]


def test_tables_are_not_cut_to_80_columns_when_output_is_not_a_terminal() -> None:
    queue = "shopify-webhooks-with-a-name-as-long-as-production-ones"
    memory = InMemoryBackend("memory://cli-wide")
    memory.flush()
    memory.enqueue([registry.make_record(tasks.add, (1, 2), queue=queue)])
    for command in (["audit"], ["status"]):
        result = CliRunner().invoke(cli, ["--app", APP, "--source", "memory://cli-wide",
                                          *command])
        assert result.exit_code == 0, result.output
        assert queue in result.output and "…" not in result.output
    audit = CliRunner().invoke(cli, ["--app", APP, "--source", "memory://cli-wide", "audit"])
    assert "cutover.testing.tasks.add" in audit.output


def test_status_shows_canceled_jobs() -> None:
    memory = InMemoryBackend("memory://cli-canceled")
    memory.flush()
    kept, canceled = (registry.make_record(tasks.add, (i, 0)) for i in range(2))
    memory.put([kept, canceled.replace(state=JobState.CANCELED)])
    result = CliRunner().invoke(cli, ["--source", "memory://cli-canceled", "--json", "status"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)["backends"]["memory+memory://cli-canceled"]["default"]
    assert counts["canceled"] == 1 and counts["waiting"] == 1
    text = CliRunner().invoke(cli, ["--source", "memory://cli-canceled", "status"]).output
    assert "canceled" in text
