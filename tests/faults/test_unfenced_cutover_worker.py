"""A `cutover worker --backend rq` started without the control plane (no --target, or a
--control naming a database without the control schema) is a plain worker: in live it runs the
source's copies without the fence, and each job it runs whose target copy also runs runs twice.
It does not register in ``rq:workers``, so it was invisible: `cutover status` printed no
warning and `phase advance` did not refuse (found by running the runbook by hand: 139 jobs ran
twice in 20 s). It must show up as a worker bypassing the fence, and a fenced one must not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from cutover_rq import RQBackend

from cutover.control import ControlPlane
from cutover.phases import Phase
from tests.integration.drain_helpers import APP, invoke, invoke_json

pytestmark = [pytest.mark.rq, pytest.mark.pg]


def test_rq_lists_cutover_workers_outside_the_fleet(cutover_redis_url: str) -> None:
    backend = RQBackend(cutover_redis_url)
    other = RQBackend(cutover_redis_url)
    try:
        other.heartbeat("cutover.host.1.abc")  # another process's cutover worker
        found = backend.native_workers()
        assert [w.id for w in found] == ["cutover.host.1.abc"]
        assert "without the fence" in found[0].detail or "fleet" in found[0].detail
        assert other.worker_ids() == ["cutover.host.1.abc"]  # what its fleet member declares
        assert backend.native_workers(exclude=other.worker_ids()) == []
        assert other.native_workers() == []  # a backend's own workers are not listed
    finally:
        backend.close()
        other.close()


def _worker(args: list[str], options: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cutover", "--app", APP, *args, "worker",
                             "--backend", "rq", *options], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def live(urls: tuple[str, str]) -> tuple[str, str]:
    source, target = urls
    for _ in range(2):  # off -> shadow -> live, forced (no workers needed for this test)
        assert invoke(source, target, "phase", "advance", "--yes", "--force", "--why",
                      "test").exit_code == 0
    control = ControlPlane(target)
    try:
        assert control.read_phase().phase is Phase.LIVE
    finally:
        control.close()
    return source, target


def _warnings(source: str, target: str) -> list[str]:
    code, doc = invoke_json(source, target, "status")
    assert code == 0
    warnings: list[Any] = doc.get("warnings", [])
    return [json.dumps(w) for w in warnings]


def test_an_rq_cutover_worker_without_the_control_plane_is_reported_in_live(
        live: tuple[str, str]) -> None:
    source, target = live
    fenced = _worker(["--source", source, "--target", target])
    try:
        # Give the fenced worker time to heartbeat and join the fleet: it is never reported.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, doc = invoke_json(source, target, "phase", "show")
            if any(m.get("side") == "source" for m in doc.get("fleet", [])):
                break
            time.sleep(0.3)
        time.sleep(1)
        assert _warnings(source, target) == []
        # No --target: no control plane, no fence. The phase command marked the store, so such
        # a worker now refuses to start (test_cutover_marker.py); --unfenced gets one past,
        # and status and advance must still see it.
        plain = _worker(["--source", source], ("--unfenced", "--why", "detection test"))
        try:
            deadline = time.monotonic() + 20
            while not (warnings := _warnings(source, target)):
                assert plain.poll() is None, plain.stderr.read() if plain.stderr else ""
                assert time.monotonic() < deadline, "status never warned"
                time.sleep(0.3)
            assert len(warnings) == 1 and "source rq worker cutover." in warnings[0]
            assert f".{plain.pid}." in warnings[0]
            code, doc = invoke_json(source, target, "phase", "advance", "--dry-run")
            assert code == 3
            refused = {r["check"]: r["detail"] for r in doc["refusals"]}
            assert "no_native_bypass" in refused  # (workers_alive too: no target worker)
            assert f".{plain.pid}." in refused["no_native_bypass"]
        finally:
            _stop(plain)
    finally:
        _stop(fenced)
