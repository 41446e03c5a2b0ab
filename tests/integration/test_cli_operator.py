"""What an operator meets on the command line (issue 14): a database that does not exist, a
malformed URL, queue names that look like markup, a status that fits a terminal, a metrics
endpoint behind basic auth."""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import http.server
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner
from cutover_rq import RQBackend
from redis import Redis
from rq import Queue

from cutover import InMemoryBackend, adapters
from cutover.cli import cli
from cutover.phases import Phase
from cutover.record import JobRecord, JobState
from cutover.testing import tasks
from cutover.testing.tasks import registry
from cutover.urls import redact
from tests.faults.test_kill_phase_change import FORCE, assert_consistent, killed, walk_to
from tests.integration.drain_helpers import invoke, invoke_json, run_cli

APP = "cutover.testing.tasks:registry"
SECRET = "s3cr3t-0p"


def _missing_database(url: str) -> str:
    """``url`` (the test server's) naming a database that does not exist, with a password."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}:{SECRET}@{host}",
                                     path="/h_cli_no_such_db"))


@pytest.mark.pg
@pytest.mark.parametrize("where", ["--target", "--control"])
def test_a_database_that_does_not_exist_is_named_at_once(
        cutover_redis_url: str, cutover_database_url: str, where: str) -> None:
    missing = _missing_database(cutover_database_url)
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["status", "--source", cutover_redis_url, where, missing])
    took = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert 'database "h_cli_no_such_db" does not exist' in result.stderr
    assert "unreachable" not in result.stderr
    assert SECRET not in result.output
    assert took < 5, f"{took:.1f} s to say the database does not exist"


@pytest.mark.pg
def test_a_worker_on_a_control_database_that_does_not_exist_refuses_at_once(
        cutover_redis_url: str, cutover_database_url: str) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["worker", "--backend", "rq", "--burst", "--app", APP,
                                      "--source", cutover_redis_url, "--control",
                                      _missing_database(cutover_database_url)])
    assert result.exit_code == 2, result.output
    assert 'database "h_cli_no_such_db" does not exist' in result.stderr
    assert "unreachable" not in result.stderr  # not worth retrying: said so
    assert SECRET not in result.output and time.monotonic() - started < 5


@pytest.mark.parametrize("command", [["status"], ["audit", "--app", APP],
                                     ["worker", "--backend", "source", "--app", APP],
                                     ["drain", "--dry-run", "--app", APP, "--target",
                                      "memory://op-t"]])
def test_a_malformed_url_exits_2_with_one_line_and_no_password(command: list[str]) -> None:
    # urllib's "Invalid IPv6 URL" reached the user as a traceback with exit 1 ("loss found")
    result = CliRunner().invoke(cli, [*command, "--source", f"redis://:{SECRET}@[::1/0"])
    assert result.exit_code == 2, result.output
    assert "malformed URL redis://:***@[::1/0: Invalid IPv6 URL" in result.stderr
    assert "Traceback" not in result.output and SECRET not in result.output


NAMES = ["[/]", "cutover:key:x", "[bold]loud[/bold]", ":smile:"]


@pytest.fixture
def odd_queues(cutover_redis_url: str) -> Iterator[str]:
    tasks.reset()
    backend = RQBackend(cutover_redis_url)
    try:
        backend.enqueue([dataclasses.replace(registry.make_record(tasks.add, (1, 2)),
                                             queue=name) for name in NAMES])
        yield cutover_redis_url
    finally:
        backend.close()


@pytest.mark.rq
@pytest.mark.parametrize("command", [["status"], ["audit", "--app", APP]],
                         ids=["status", "audit"])
def test_queue_names_are_printed_as_written_never_as_markup_or_emoji(
        odd_queues: str, command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--source", odd_queues])
    assert result.exit_code in (0, 3), result.output  # audit: 0, nothing left behind
    assert "Traceback" not in result.output
    text = result.stdout
    for name in NAMES:
        assert name in text, (name, text)
    assert "\N{KEY}" not in text and "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" \
        not in text


def _in_a_terminal(args: list[str], columns: int) -> tuple[int, str, str]:
    """Run ``cutover ARGS`` with its stdout on a pseudo-terminal ``columns`` wide; its exit
    code, what the terminal showed (colours stripped) and its stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "cutover", *args], stdout=slave,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=30)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode()).replace("\r", "")
    return code, text, err


@pytest.mark.rq
@pytest.mark.pg
def test_status_fits_100_columns_in_a_terminal_and_says_nothing_idle(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    backend = RQBackend(rq_url)
    try:
        backend.enqueue([dataclasses.replace(registry.make_record(tasks.add, (1, 2)),
                                             queue="a-rather-long-queue-name-for-reports")])
    finally:
        backend.close()
    code, shown, err = _in_a_terminal(["status", "--source", rq_url, "--target", pg_url], 100)
    assert code == 0, err
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n" + shown
    assert "…" not in shown  # no cell cut to fit
    header = next(line for line in lines if "waiting" in line)
    for column in ("waiting", "scheduled", "deferred", "held", "active", "completed",
                   "failed", "canceled"):
        assert column in header, header
    # no INFO line per adapter opened; no empty metrics table when nothing was counted
    assert "opened" not in err and "INFO" not in err, err
    assert "metrics" not in shown and "nothing counted" not in shown


@pytest.mark.rq
def test_status_json_counts_deferred_apart_from_scheduled(cutover_redis_url: str) -> None:
    with Redis.from_url(cutover_redis_url) as conn:
        queue = Queue("default", connection=conn)
        first = queue.enqueue("cutover.testing.tasks.add", 1, 2)
        queue.enqueue("cutover.testing.tasks.add", 3, 4, depends_on=first)  # deferred
    result = CliRunner().invoke(cli, ["status", "--source", cutover_redis_url, "--json"])
    assert result.exit_code == 0, result.output
    (counts,) = json.loads(result.stdout)["backends"].values()
    assert counts["default"]["deferred"] == 1 and counts["default"]["scheduled"] == 0


class _Metrics(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        got = self.headers.get("Authorization")
        type(self).seen.append(got)
        expected = "Basic " + base64.b64encode(b"scraper:" + SECRET.encode()).decode()
        if got != expected:
            self.send_response(401)
            self.end_headers()
            return
        body = (b"# TYPE cutover_jobs_in_flight gauge\n"
                b'cutover_jobs_in_flight{backend="rq"} 7.0\n')
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[int]:
    _Metrics.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_metrics_from_a_url_with_userinfo_sends_it_as_basic_auth(endpoint: int,
                                                                 as_json: bool) -> None:
    # was: "scraper:s3cr3t-0p@127.0.0.1" handed to the resolver as a host name
    memory = InMemoryBackend("memory://op-metrics")
    memory.flush()
    url = f"http://scraper:{SECRET}@127.0.0.1:{endpoint}/metrics"
    result = CliRunner().invoke(cli, ["status", "--source", "memory://op-metrics",
                                      "--metrics-from", url, *(["--json"] if as_json else [])])
    assert result.exit_code == 0, result.output
    assert _Metrics.seen and _Metrics.seen[-1] is not None
    assert SECRET not in result.output
    assert f"scraper:***@127.0.0.1:{endpoint}" in result.stdout
    if as_json:
        doc = json.loads(result.stdout)
        assert doc["metrics"]["backends"]["rq"]["in_flight"] >= 7


def test_metrics_from_with_a_refused_password_is_named_without_it(endpoint: int) -> None:
    url = f"http://scraper:wrong-{SECRET}@127.0.0.1:{endpoint}/metrics"
    result = CliRunner().invoke(cli, ["status", "--prometheus", "--metrics-from", url])
    assert result.exit_code == 2, result.output
    assert "401" in result.stderr and SECRET not in result.output


def _failed_for_good(n: int) -> list[JobRecord]:
    return [registry.make_record(tasks.boom, ()).replace(
        id=f"failed-for-good-{i:04d}-" + "x" * 40, state=JobState.FAILED, attempts=1,
        error=f"Traceback (most recent call last):\n  File \"t.py\", line {i}\nValueError: boom")
        for i in range(n)]


@pytest.mark.rq
@pytest.mark.pg
def test_drain_allow_failed_exits_0_when_only_failed_for_good_jobs_stayed(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source = RQBackend(rq_url)
    try:
        source.put(_failed_for_good(300))
        source.enqueue([registry.make_record(tasks.add, (1, 2)) for _ in range(5)])
    finally:
        source.close()
    first = invoke(rq_url, pg_url, "drain", "--yes")
    assert first.exit_code == 3, first.output  # without --allow: exit 3, as before
    assert "moved 5 jobs" in first.stdout
    # one line per reason, with a count and a few ids; not one line of 300 ids
    assert max(len(line) for line in first.stdout.splitlines()) < 300, first.stdout
    assert "left in place: failed 300" in first.stdout
    assert "300 x ValueError: boom: 'failed-for-good-0000-" in first.stdout
    assert "and 297 more" in first.stdout
    again = invoke(rq_url, pg_url, "drain", "--yes", "--allow", "failed")
    assert again.exit_code == 0, again.output
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes", "--allow", "failed")
    assert code == 0 and len(report["left"]["failed"]) == 300  # --json keeps every id
    dry = invoke(rq_url, pg_url, "drain", "--dry-run")
    assert dry.exit_code == 0 and "would leave failed 300" in dry.stdout
    assert max(len(line) for line in dry.stdout.splitlines()) < 300, dry.stdout


@pytest.mark.rq
@pytest.mark.pg
def test_drain_allow_failed_still_exits_3_for_other_classes(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    source = RQBackend(rq_url)
    try:
        source.put(_failed_for_good(1))
        unknown = registry.make_record(tasks.add, (1, 2)).replace(task="no.such:task")
        source.enqueue([unknown])
    finally:
        source.close()
    result = invoke(rq_url, pg_url, "drain", "--yes", "--allow", "failed")
    assert result.exit_code == 3, result.output
    assert "left in place: unknown_task 1" in result.stdout
    assert invoke(rq_url, pg_url, "drain", "--yes", "--allow", "failed", "--allow",
                  "unknown_task").exit_code == 0


@pytest.mark.rq
@pytest.mark.pg
@pytest.mark.slow
def test_complete_killed_after_its_commit_can_be_rerun(urls: tuple[str, str]) -> None:
    control = walk_to(urls, Phase.RAMPDOWN)
    try:
        killed(urls, "phase_committed:1", "complete", *FORCE)
        assert (control.read_phase().phase, control.read_phase().epoch) == (Phase.COMPLETE, 4)
        again = run_cli(*urls, "complete", "--yes")  # no --force: nothing is checked again
        assert again.returncode == 0, again.stdout + again.stderr
        assert "phase complete (epoch 4) already" in again.stdout
        assert "nothing to do" in again.stdout
        assert assert_consistent(control, Phase.COMPLETE, Phase.COMPLETE, 4) is Phase.COMPLETE
        code, doc = invoke_json(*urls, "complete", "--yes")
        assert code == 0 and doc["rerun"] is True and doc["moved"] is False
        assert control.read_phase().epoch == 4  # no second transition
    finally:
        control.close()


def _with_password(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{SECRET}@{host}"))


@pytest.mark.rq
@pytest.mark.pg
@pytest.mark.slow
def test_rollback_dry_run_counts_what_would_move_back_and_shows_the_reverse_drain(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    pg_pw = _with_password(pg_url)  # (the test server trusts 127.0.0.1: any password works)
    control = walk_to(urls, Phase.RAMPDOWN)
    target = adapters.open_backend(pg_url)
    try:
        target.enqueue([registry.make_record(tasks.add, (i, 1)) for i in range(3)])
        reverse = f"`cutover drain --dry-run --source {redact(pg_pw)} --target {rq_url}`"
        assert "***" in reverse
        dry = invoke(rq_url, pg_pw, "rollback", "--dry-run", *FORCE)
        assert dry.exit_code == 0, dry.output
        assert "would move back 3 waiting job(s) from the target" in dry.stdout
        assert reverse in dry.stdout, dry.stdout
        assert SECRET not in dry.output
        code, doc = invoke_json(rq_url, pg_pw, "rollback", "--dry-run", *FORCE)
        assert code == 0 and doc["would_move_back"] == 3
        assert control.read_phase().phase is Phase.RAMPDOWN  # a dry run
        # killed after its commit, before its drain: the re-run's dry run says the same
        killed(urls, "phase_committed:1", "rollback", *FORCE)
        assert control.read_phase().phase is Phase.LIVE
        again = invoke(rq_url, pg_pw, "rollback", "--to", "live", "--dry-run")
        assert again.exit_code == 0, again.output
        assert "already" in again.stdout and "would move back 3 waiting job(s)" in again.stdout
        assert reverse in again.stdout, again.stdout
        assert SECRET not in again.output
    finally:
        target.close()
        control.close()
