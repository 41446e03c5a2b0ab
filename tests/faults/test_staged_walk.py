"""Proof: the whole walk of runbooks/staged-cutover.md, command by command (each a real `cutover`
process), against real RQ and Procrastinate: off -> shadow -> live -> rampdown -> complete while
a producer thread enqueues through the Router throughout and a `cutover worker` runs on each
side. Afterwards every accepted job ran exactly once (counted by the task itself in a Redis
hash), `cutover verify` is CLEAN, and `cutover rollback` out of complete is refused without
--force --why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
import redis

from cutover import Router
from cutover.control import ControlPlane
from cutover.phases import Phase
from tests.faults import tally

pytestmark = [pytest.mark.rq, pytest.mark.pg, pytest.mark.slow]


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Producer(threading.Thread):
    """Enqueues tally(n) through the Router, n = 0, 1, 2, ...; ``accepted`` holds every n the
    Router returned an id for (an enqueue that raised was not accepted)."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__(daemon=True)
        self.router = Router(tally.registry, source=source, target=target)
        self.accepted: list[int] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            try:
                self.router.enqueue(tally.tally, n)
                self.accepted.append(n)
            except Exception as exc:  # counted: the test fails on any
                self.errors.append(repr(exc))
            n += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        self.router.close()


@pytest.fixture
def env(cutover_redis_url: str, cutover_database_url: str) -> dict[str, str]:
    """The runbook's shell (step 0): CUTOVER_APP, CUTOVER_SOURCE, CUTOVER_TARGET."""
    return {**os.environ, "CUTOVER_APP": tally.APP, "CUTOVER_SOURCE": cutover_redis_url,
           "CUTOVER_TARGET": cutover_database_url, tally.URL_ENV: cutover_redis_url,
           "CUTOVER_SHADOW_MIN_JOBS": "5", "CUTOVER_ACK_WAIT": "20"}


def cutover(env: dict[str, str], *args: str, code: int = 0) -> str:
    proc = subprocess.run([sys.executable, "-m", "cutover", *args], env=env, text=True,
                          capture_output=True, timeout=180)
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr[-3000:])
    return proc.stdout


def _ready(env: dict[str, str]) -> bool:
    proc = subprocess.run([sys.executable, "-m", "cutover", "complete", "--dry-run"], env=env,
                          text=True, capture_output=True, timeout=180)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    return proc.returncode == 0


def test_the_runbook_walk_runs_every_accepted_job_once_and_verifies_clean(
        env: dict[str, str]) -> None:
    source, target = env["CUTOVER_SOURCE"], env["CUTOVER_TARGET"]
    tally_db = redis.Redis.from_url(source)
    # 0. set up
    cutover(env, "init", "--yes")
    assert "phase off (epoch 0)" in cutover(env, "phase", "show")
    control = ControlPlane(target)
    workers = [subprocess.Popen(
        [sys.executable, "-m", "cutover", "worker", "--backend", backend, "--poll-interval",
         "0.1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for backend in ("rq", "procrastinate")]
    producer = Producer(source, target)
    producer.start()
    try:
        wait_for("both workers in the fleet",
                 lambda: len(control.alive(kind="worker")) == 2)
        # 1. off -> shadow
        assert "off -> shadow: would move" in cutover(env, "phase", "advance", "--dry-run")
        cutover(env, "phase", "advance", "--yes", "--why", "start shadow")
        # 2. shadow -> live, once enough dry runs matched
        wait_for("5 matching dry runs", lambda: control.shadow_rate().matched >= 5)
        assert "shadow_consistency" in cutover(env, "phase", "advance", "--dry-run")
        cutover(env, "phase", "advance", "--yes", "--why", "shadow clean")
        time.sleep(2)  # live: both fleets execute through the fence
        # 3. live -> rampdown
        cutover(env, "phase", "advance", "--yes", "--why", "live for a while")
        # 4. rampdown -> complete, once the source's leftovers ran out
        wait_for("complete's checks to pass (the runbook's 'ready')",
                 lambda: _ready(env), timeout=120)
        cutover(env, "complete", "--yes", "--why", "source empty, verify clean")
        assert control.read_phase().phase is Phase.COMPLETE
        time.sleep(1)
    finally:
        producer.stop()
    try:
        accepted = producer.accepted
        assert producer.errors == [], producer.errors[:3]
        assert len(accepted) > 50
        wait_for("every accepted job to run",
                 lambda: set(tally.counts(tally_db)) >= set(accepted), timeout=120)
        time.sleep(1)  # a second run of anything would land now
        runs = tally.counts(tally_db)
        assert {n: c for n, c in runs.items() if c != 1} == {}, "a job ran twice"
        assert set(runs) == set(accepted)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(60)
    # the walk took every step unforced, and each side executed jobs through the fence
    history = control.history(10)
    assert [(h.frm, h.to) for h in reversed(history)] == [
        (Phase.OFF, Phase.SHADOW), (Phase.SHADOW, Phase.LIVE), (Phase.LIVE, Phase.RAMPDOWN),
        (Phase.RAMPDOWN, Phase.COMPLETE)]
    assert not any(h.forced for h in history)
    with psycopg.connect(target, autocommit=True) as conn:
        rows = conn.execute("SELECT side, count(*) FROM cutover.claims WHERE state = 'done' "
                            "GROUP BY side").fetchall()
    done: dict[str, int] = dict(rows)
    assert done.get("source", 0) > 0 and done.get("target", 0) > 0, done
    out = cutover(env, "verify")
    assert "CLEAN" in out, out
    refused = cutover(env, "rollback", "--yes", code=3)
    assert "point_of_no_return" in refused
    assert control.read_phase().phase is Phase.COMPLETE
    control.close()

