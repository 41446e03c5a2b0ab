"""Shared set-up for the drain, verify and fault tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

from click.testing import CliRunner, Result

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.cli import cli
from cutover.record import JobState

APP = "cutover.testing.tasks:registry"


def invoke(source: str, target: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--app", APP, "--source", source, "--target", target, *args])


def invoke_json(source: str, target: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = invoke(source, target, "--json", *args)
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


def run_cli(source: str, target: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120, app: str = APP) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (so it can be killed -9)."""
    return subprocess.run(
        [sys.executable, "-m", "cutover", "--app", app, "--source", source, "--target", target,
         *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})})


def ids_by_state(backend: QueueBackend) -> dict[str, JobState]:
    return {r.id: r.state for r in backend.snapshot()}


def open_pair(source: str, target: str) -> tuple[QueueBackend, QueueBackend]:
    return adapters.open_backend(source), adapters.open_backend(target)


def slow_drain_in_thread(source: str, target: str) -> tuple[threading.Thread, dict[str, Any]]:
    """A CLI drain of 2-job batches at 20 jobs/s in a thread (to be paused, stopped, or locked
    against); its (exit code, JSON report) lands in ``outcome["result"]``."""
    outcome: dict[str, Any] = {}

    def drain() -> None:
        outcome["result"] = invoke_json(source, target, "drain", "--yes", "--batch-size", "2",
                                        "--rate", "20")

    thread = threading.Thread(target=drain)
    thread.start()
    return thread, outcome


def store_key(url: str) -> str:
    """How the ledger, the runs, the pair lock and held jobs' owners name the store at ``url``."""
    backend = adapters.open_backend(url)
    try:
        return backend.identity().key
    finally:
        backend.close()
