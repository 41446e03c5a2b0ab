"""Proof, the rollback half: producers in two threads (one shared Router) and a producer process
enqueue continuously, at a throttled rate, while the phase is advanced and rolled back from each
phase (shadow -> off, live -> shadow, rampdown -> live, complete -> rampdown forced, and straight to
off from live and from rampdown) through the CLI's own ``cutover rollback``, with phase-aware
cutover workers on both sides; then the walk finishes in complete. Every accepted job (every id
an enqueue returned) runs exactly once, counted in the table the task writes (fence_runs), not in
logs.

Every wait fails on a stall (no progress for a while), not on a fixed slow timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from cutover import Call, Router
from cutover.cli import cli
from cutover.control import MemberKind
from cutover.phases import Phase, Side
from cutover.worker import Worker
from tests.integration.fence_tasks import registry
from tests.integration.test_fence import ROOT, Pairing

pytestmark = [pytest.mark.rq, pytest.mark.pg]


APP = "tests.integration.fence_tasks:registry"
#: Enqueue calls per second per producer (a call is one job or a batch of three): about 30 jobs
#: a second in all, which the two workers of a 2-core machine keep up with.
RATE = 6.0
#: How long a wait may see no progress before it fails.
STALL = 30.0

PRODUCER = """
import sys, os, time
from cutover import Call, Router
from tests.integration.fence_tasks import registry
router = Router(registry, source=sys.argv[1], target=sys.argv[2], refresh=0.2, heartbeat=0.3)
name, stop, pause, n = sys.argv[3], sys.argv[4], 1.0 / float(sys.argv[5]), 0
while not os.path.exists(stop):
    n += 1
    try:
        if n % 2:
            ids = [router.enqueue("fence.count", f"{name}-{n}")]
            keys = [f"{name}-{n}"]
        else:
            keys = [f"{name}-{n}-{i}" for i in range(3)]
            ids = router.enqueue_many([Call("fence.count", (k,)) for k in keys])
        print("\\n".join(f"{k} {i}" for k, i in zip(keys, ids)), flush=True)
    except Exception as exc:  # not accepted: not counted
        print(f"error {exc!r}", file=sys.stderr, flush=True)
    time.sleep(pause)
router.close()
"""


class Producers:
    """Two threads sharing one Router here, and one producer process; each call throttled to
    ``rate`` calls a second. ``accepted`` maps each job's key (what the task records) to the
    id its enqueue returned."""

    def __init__(self, pairing: Pairing, tmp: Path, rate: float = RATE) -> None:
        self.stop_file = tmp / "stop"
        self.pause = 1.0 / rate
        self.accepted: dict[str, str] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.router = Router(registry, source=pairing.source_url, target=pairing.target_url,
                             refresh=0.2, heartbeat=0.3)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]))
        self.procs = [subprocess.Popen(
            [sys.executable, "-c", PRODUCER, pairing.source_url, pairing.target_url, "p0",
             str(self.stop_file), str(rate)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)]
        self.threads = [threading.Thread(target=self._loop, args=(f"t{i}",)) for i in range(2)]
        for t in self.threads:
            t.start()

    def _loop(self, name: str) -> None:
        n = 0
        while not self._stop.wait(self.pause):
            n += 1
            try:
                if n % 2:
                    keys = [f"{name}-{n}"]
                    ids = [self.router.enqueue("fence.count", keys[0])]
                else:
                    keys = [f"{name}-{n}-{i}" for i in range(3)]
                    ids = self.router.enqueue_many([Call("fence.count", (k,)) for k in keys])
            except Exception as exc:  # not accepted: not counted
                with self._lock:
                    self.errors.append(repr(exc))
                continue
            with self._lock:
                self.accepted.update(zip(keys, ids, strict=True))

    def finish(self) -> tuple[dict[str, str], list[str]]:
        self._stop.set()
        self.stop_file.write_text("stop")
        for t in self.threads:
            t.join(30)
        accepted, errors = dict(self.accepted), list(self.errors)
        for proc in self.procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            for line in out.splitlines():
                key, job_id = line.split()
                accepted[key] = job_id
            errors += [line for line in err.splitlines() if line.startswith("error")]
        self.router.close()
        return accepted, errors


class Walk:
    """The phase moves: forward (forced, as the forward proof does), back through the CLI."""

    def __init__(self, pairing: Pairing) -> None:
        self.pairing = pairing
        self.rollbacks: list[dict[str, Any]] = []

    def advance(self, to: Phase) -> None:
        self.pairing.set_phase(to)
        self.acked()

    def forward(self, *phases: Phase) -> None:
        for phase in phases:
            self.advance(phase)
            time.sleep(1.0)

    def rollback(self, to: Phase, *force: str) -> dict[str, Any]:
        """``cutover rollback`` as an operator runs it (the CLI's own code path, in-process)."""
        started = time.monotonic()
        result = CliRunner().invoke(cli, [
            "--source", self.pairing.source_url, "--target", self.pairing.target_url,
            "--app", APP, "--json", "rollback", "--yes", *force])
        took = time.monotonic() - started
        assert result.exit_code == 0, result.output
        doc: dict[str, Any] = json.loads(result.stdout)
        assert doc["to"] == to.value and doc["moved"] is True, doc
        assert not doc.get("left_on_target"), doc
        self.rollbacks.append({"from": doc["from"], "to": doc["to"], "seconds": round(took, 1),
                               "moved_back": (doc.get("moved_back") or {}).get("moved")})
        self.acked()
        return doc

    def acked(self) -> None:
        """Every producer has acknowledged the current epoch (its older calls have finished)."""
        epoch = self.pairing.control.read_phase().epoch
        wait(lambda: all(p.acked_epoch >= epoch for p in
                         self.pairing.control.alive(kind=MemberKind.PRODUCER)),
             f"every producer to acknowledge epoch {epoch}")

    def source_drained(self) -> None:
        """The source's waiting jobs run out (rampdown: nothing new is written there)."""
        wait_progressing(lambda: waiting(self.pairing), "the source's leftovers to run")


def test_every_accepted_job_runs_exactly_once_through_a_rollback_from_each_phase(
        pairing: Pairing, tmp_path: Path) -> None:
    # One job at a time per side: jobs wait on both sides, for the move backs to move and for
    # the fence to meet copies whose twin already ran (the 2-core machine keeps up meanwhile).
    workers: list[Worker] = [pairing.worker(side, burst=False, lease=5.0, concurrency=n)
                             for side, n in ((Side.SOURCE, 1), (Side.TARGET, 1))]
    runners = [threading.Thread(target=w.run, kwargs={"install_signal_handlers": False})
               for w in workers]
    for r in runners:
        r.start()
    connections = Peak(pairing.target_url)
    try:
        accepted, errors, walk = walk_with_rollbacks(pairing, tmp_path)
        print(f"rollbacks: {walk.rollbacks}; accepted {len(accepted)} jobs")
        assert len(accepted) > 200
        assert len(set(accepted.values())) == len(accepted)  # one id per accepted job
        # Wait while the runs make progress; fail when they stall (a job that will never run).
        wait_progressing(lambda: len(set(accepted) - set(pairing.runs())),
                         "every accepted job to run",
                         lambda: sorted(set(accepted) - set(pairing.runs()))[:10])
        time.sleep(2.0)  # a second run, if any, would show now
    finally:
        for w in workers:
            w.stop()
        for r in runners:
            r.join(60)
        connections.stop()
    print(f"peak connections to the test database: {connections.peak}")
    runs = pairing.runs()
    twice = {k: n for k, n in runs.items() if n != 1}
    assert twice == {}, f"ran more than once: {sorted(twice.items())[:10]}"
    assert set(runs) == set(accepted)  # nothing ran that no producer was told was accepted
    assert errors == []
    assert connections.peak <= 40


def walk_with_rollbacks(pairing: Pairing, tmp: Path) -> tuple[dict[str, str], list[str], Walk]:
    """Producers enqueue throughout the walk; returns what they were told was accepted."""
    walk = Walk(pairing)
    producers = Producers(pairing, tmp)
    try:
        time.sleep(1.0)  # off: the source only
        walk.advance(Phase.SHADOW)
        time.sleep(1.5)
        walk.rollback(Phase.OFF)
        time.sleep(1.0)
        walk.advance(Phase.SHADOW)
        walk.advance(Phase.LIVE)
        time.sleep(1.5)
        walk.rollback(Phase.SHADOW)
        time.sleep(1.0)
        walk.advance(Phase.LIVE)
        walk.advance(Phase.RAMPDOWN)
        time.sleep(1.5)  # target-only jobs pile up on the target
        walk.rollback(Phase.LIVE)  # ... and are moved back to the source
        time.sleep(1.5)
        # Straight to off from live: source copies whose target copy ran must not run again.
        walk.rollback(Phase.OFF, "--to", "off")
        time.sleep(1.0)
        walk.forward(Phase.SHADOW, Phase.LIVE, Phase.RAMPDOWN)
        walk.source_drained()
        walk.advance(Phase.COMPLETE)
        time.sleep(1.5)
        walk.rollback(Phase.RAMPDOWN, "--force", "--why", "rollback proof")
        time.sleep(1.0)
        # Straight to off: the target goes idle, so a job the move back left there never runs.
        walk.rollback(Phase.OFF, "--to", "off")
        time.sleep(1.0)
        walk.forward(Phase.SHADOW, Phase.LIVE, Phase.RAMPDOWN)
        walk.source_drained()
        walk.advance(Phase.COMPLETE)
        time.sleep(1.0)
    finally:
        accepted, errors = producers.finish()
    return accepted, errors, walk


def waiting(pairing: Pairing) -> int:
    return sum(n for per in pairing.source.counts().values() for s, n in per.items()
               if s.live and s.value != "started")


class Peak:
    """The most connections to the test's database seen (sampled every 0.5 s)."""

    def __init__(self, url: str) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._conn = psycopg.connect(url, autocommit=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            row = self._conn.execute("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE datname = current_database()").fetchone()
            self.peak = max(self.peak, int(row[0]) if row else 0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


def wait_progressing(left: Callable[[], int], what: str,
                     show: Callable[[], object] = lambda: "") -> None:
    """Wait until ``left()`` is 0; fail when it has not shrunk for ``STALL`` seconds."""
    remaining = left()
    deadline = time.monotonic() + STALL
    while remaining:
        assert time.monotonic() < deadline, (
            f"stalled waiting for {what}: {remaining} left for {STALL:g} s {show()}")
        time.sleep(0.2)
        now = left()
        if now < remaining:
            deadline = time.monotonic() + STALL
        remaining = now


def wait(check: Callable[[], bool], what: str, timeout: float = STALL) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def rollback_cli(pairing: Pairing, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["--source", pairing.source_url, "--target",
                                      pairing.target_url, "--app", APP, "--json", "rollback",
                                      "--yes", *args])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


@pytest.mark.parametrize("frm", [Phase.LIVE, Phase.RAMPDOWN])
def test_a_source_copy_whose_target_copy_ran_does_not_run_again_after_a_rollback_to_off(
        pairing: Pairing, frm: Phase) -> None:
    """Regression: in off after a rollback (epoch > 0) the source ran unfenced, so the source
    copy of a job written in live whose target copy had run ran a second time."""
    pairing.set_phase(Phase.LIVE)
    pairing.dual("fence.count", "ran-on-target")
    pairing.set_phase(frm)
    assert pairing.worker(Side.TARGET).run(install_signal_handlers=False).succeeded == 1
    doc = rollback_cli(pairing, "--to", "off")
    assert doc["phase"] == "off" and doc["moves_back"] is True
    report = pairing.worker(Side.SOURCE).run(install_signal_handlers=False)
    assert (report.succeeded, report.duplicates) == (0, 1)
    assert pairing.runs() == {"ran-on-target": 1}
    # A job written in off after the rollback runs on the source as usual (through the fence).
    pairing.source.enqueue([registry.make_record("fence.count", ("after",), {})])
    assert pairing.worker(Side.SOURCE).run(install_signal_handlers=False).succeeded == 1
    assert pairing.runs() == {"ran-on-target": 1, "after": 1}


def test_the_move_back_waits_for_a_job_running_on_the_target_instead_of_leaving_it(
        pairing: Pairing) -> None:
    """Regression: a move back reported every job running on the target as left there (exit 3),
    so under a busy fleet a rollback out of rampdown never succeeded. It now waits (bounded) for
    the jobs running when its passes end; new jobs workers start meanwhile do not prolong it."""
    pairing.set_phase(Phase.RAMPDOWN)
    record = registry.make_record("fence.slow_first", ("long", 2.0), {})
    pairing.target.enqueue([record])
    pairing.worker(Side.SOURCE)  # alive in the fleet (rollback checks it), not running ...
    pairing.gates[-1].mode()  # ... at the current epoch
    worker = pairing.worker(Side.TARGET, burst=False, concurrency=1)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        wait(lambda: pairing.runs("started").get("long") == 1, "the target to start the job")
        waiting_job = registry.make_record("fence.count", ("waiting",), {})
        pairing.target.enqueue([waiting_job])  # the one thread is busy: this one waits
        started = time.monotonic()
        doc = rollback_cli(pairing)
        assert doc["phase"] == "live" and not doc["left_on_target"]
        assert doc["moved_back"]["moved"] == 1 and doc["moved_back"]["running"] == []
        assert 0.5 < time.monotonic() - started < 20
        assert pairing.runs() == {"long": 1}  # it ended on the target while the command waited
        moved = pairing.source.get(waiting_job.id)
        assert moved is not None and moved.state.live
    finally:
        worker.stop()
        thread.join(30)
