"""Proof: producers in several threads and two processes enqueue continuously through the Router
(``enqueue`` and ``enqueue_many``) while the phase walks off -> shadow -> live -> rampdown ->
complete, with phase-aware cutover workers running on both sides; every accepted job (every id an
enqueue returned) runs exactly once, counted in the table the task writes (fence_runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cutover import Call, Router
from cutover.control import MemberKind
from cutover.phases import Phase, Side
from cutover.worker import Worker
from tests.integration.fence_tasks import registry
from tests.integration.test_fence import ROOT, Pairing

PRODUCER = """
import sys, os, time, logging
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s %(message)s")
from cutover import Call, Router
from tests.integration.fence_tasks import registry
router = Router(registry, source=sys.argv[1], target=sys.argv[2], refresh=0.2, heartbeat=0.3)
name, stop, n = sys.argv[3], sys.argv[4], 0
while not os.path.exists(stop):
    n += 1
    try:
        if n % 2:
            job = router.enqueue("fence.count", f"{name}-{n}")
            print(f"{name}-{n}\t{job}\t{router.phase.value}", flush=True)
        else:
            keys = [f"{name}-{n}-{i}" for i in range(4)]
            ids = router.enqueue_many([Call("fence.count", (k,)) for k in keys])
            phase = router.phase.value
            print("\\n".join(f"{k}\t{i}\t{phase}" for k, i in zip(keys, ids)), flush=True)
    except Exception as exc:  # not accepted: not counted
        print(f"error {exc}", file=sys.stderr, flush=True)
    time.sleep(0.05)
router.close()
"""


class Producers:
    """Three threads sharing one Router here, and two producer processes."""

    def __init__(self, pairing: Pairing, tmp: Path) -> None:
        self.stop_file = tmp / "stop"
        self.accepted: list[str] = []
        self.errors: list[str] = []
        #: key -> (job id, phase read right after the enqueue), and each process's log.
        self.where: dict[str, tuple[str, str]] = {}
        self.logs: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.router = Router(registry, source=pairing.source_url,
                             target=pairing.target_url, refresh=0.2, heartbeat=0.3)
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.procs = [subprocess.Popen(
            [sys.executable, "-c", PRODUCER, pairing.source_url, pairing.target_url,
             f"p{i}", str(self.stop_file)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True) for i in range(2)]
        self.threads = [threading.Thread(target=self._loop, args=(f"t{i}",)) for i in range(3)]
        for t in self.threads:
            t.start()

    def _loop(self, name: str) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                if n % 2:
                    self.router.enqueue("fence.count", f"{name}-{n}")
                    keys = [f"{name}-{n}"]
                else:
                    keys = [f"{name}-{n}-{i}" for i in range(3)]
                    self.router.enqueue_many([Call("fence.count", (k,)) for k in keys])
            except Exception as exc:
                with self._lock:
                    self.errors.append(repr(exc))
                continue
            with self._lock:
                self.accepted.extend(keys)
            time.sleep(0.05)

    def finish(self) -> tuple[list[str], list[str]]:
        self._stop.set()
        self.stop_file.write_text("stop")
        for t in self.threads:
            t.join(30)
        accepted, errors = list(self.accepted), list(self.errors)
        for proc in self.procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            self.logs.append(err)
            for line in out.splitlines():
                if line:
                    key, job_id, phase = line.split("\t")
                    accepted.append(key)
                    self.where[key] = (job_id, phase)
            errors += [line for line in err.splitlines() if line.startswith("error")]
        self.router.close()
        return accepted, errors


def test_every_accepted_job_runs_exactly_once_through_the_whole_walk(
        pairing: Pairing, tmp_path: Path) -> None:
    # A lease long enough that a heartbeat late on a loaded 2-core machine does not hand a
    # running job's claim over (leases are the fence's one timing assumption).
    workers: list[Worker] = [pairing.worker(side, burst=False, lease=15.0)
                             for side in (Side.SOURCE, Side.TARGET)]
    runners = [threading.Thread(target=w.run, kwargs={"install_signal_handlers": False})
               for w in workers]
    for r in runners:
        r.start()
    try:
        accepted, errors, producers = walk(pairing, tmp_path)
        assert len(accepted) > 100 and len(set(accepted)) == len(accepted)
        # Producers outpace the workers on a small machine: wait while the runs make progress,
        # and fail only when they stall (a job that will never run), not on a slow machine.
        try:
            wait_progressing(lambda: set(accepted) - set(pairing.runs()), 60,
                             "every accepted job to run", lambda: queued(pairing))
        except AssertionError as exc:
            left = set(accepted) - set(pairing.runs())
            raise AssertionError(f"{exc}\n{diagnose(pairing, producers, left)}") from None
        time.sleep(2.0)  # a second run, if any, would show now
    finally:  # the workers stop even when the proof fails (their threads would outlive it)
        for w in workers:
            w.stop()
        for r in runners:
            r.join(60)
    runs = pairing.runs()
    twice = {k: n for k, n in runs.items() if n != 1}
    assert twice == {}, f"ran more than once: {sorted(twice.items())[:10]}"
    assert set(runs) == set(accepted)  # nothing ran that no producer was told was accepted
    assert errors == []


def walk(pairing: Pairing, tmp_path: Path) -> tuple[list[str], list[str], Producers]:
    """off -> shadow -> live -> rampdown -> complete under the producers; what they were told
    was accepted, the errors they got."""
    producers = Producers(pairing, tmp_path)
    try:
        time.sleep(1.5)  # off: the source only
        for phase in (Phase.SHADOW, Phase.LIVE, Phase.RAMPDOWN):
            pairing.set_phase(phase)
            acked(pairing, pairing.control.read_phase().epoch)
            time.sleep(2.0)
        # The leftovers of the source run there (fenced) until it is empty; then complete.
        wait(lambda: not waiting(pairing), 60, "the source's leftovers to run")
        pairing.set_phase(Phase.COMPLETE)
        acked(pairing, pairing.control.read_phase().epoch)
        time.sleep(1.5)
    finally:
        accepted, errors = producers.finish()
    return accepted, errors, producers


def diagnose(pairing: Pairing, producers: Producers, left: set[str]) -> str:
    """Where the jobs that never ran are: by producer and phase, a sample's copies and claims,
    the queues, and the producer processes' logs (each part guarded: a report, never a mask)."""
    from collections import Counter

    def part(what: str, fn: Callable[[], object]) -> str:
        try:
            return f"{what}: {fn()}"
        except Exception as exc:  # the diagnosis must not hide the failure
            return f"{what}: ({exc!r})"

    groups = Counter((k.split("-")[0], producers.where.get(k, ("?", "?"))[1]) for k in left)
    lines = [f"never ran, by (producer, phase read after the enqueue): {dict(groups)}",
             part("phase now", pairing.control.read_phase),
             part("producers alive", lambda: [(p.pid, p.acked_epoch) for p in
                                              pairing.control.alive(kind=MemberKind.PRODUCER)]),
             part("source counts", pairing.source.counts),
             part("target counts", pairing.target.counts),
             part("shadow", pairing.control.shadow_rate),
             part("shadow mismatches", pairing.control.shadow_mismatches)]
    for key in sorted(left, key=lambda k: (k.split("-")[0], int(k.split("-")[1])))[:8]:
        job_id = producers.where.get(key, ("?",))[0]
        lines.append(part(f"{key} {job_id}", lambda job_id=job_id: (
            pairing.source.get(job_id), pairing.target.get(job_id),
            pairing.control.states([job_id]).get(job_id), pairing.control.claim_of(job_id))))
    for i, log in enumerate(producers.logs):
        lines.append(f"--- p{i} log (first 30, last 30 lines) ---")
        lines += [*log.splitlines()[:30], "...", *log.splitlines()[-30:]]
    return "\n".join(lines)


def waiting(pairing: Pairing) -> int:
    return sum(n for per in pairing.source.counts().values() for s, n in per.items()
               if s.live and s.value != "started")


def acked(pairing: Pairing, epoch: int) -> None:
    wait(lambda: all(p.acked_epoch >= epoch
                     for p in pairing.control.alive(kind=MemberKind.PRODUCER)),
         30, f"every producer to acknowledge epoch {epoch}")


def queued(pairing: Pairing) -> int:
    """Copies waiting on either side (a worker removing duplicates makes progress too)."""
    return sum(n for backend in (pairing.source, pairing.target)
               for per in backend.counts().values() for s, n in per.items() if s.live)


def wait_progressing(left: Callable[[], set[str]], stall: float, what: str,
                     backlog: Callable[[], int] = lambda: 0) -> None:
    """Wait until ``left()`` is empty; fail when neither it nor ``backlog()`` has shrunk for
    ``stall`` seconds (a job that will never run, not a slow machine)."""
    remaining, waiting_now = left(), backlog()
    deadline = time.monotonic() + stall
    while remaining:
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}: {len(remaining)} never ran, e.g. "
            f"{sorted(remaining)[:5]}")
        time.sleep(0.2)
        now, waiting_then = left(), backlog()
        if len(now) < len(remaining) or waiting_then < waiting_now:
            deadline = time.monotonic() + stall
        remaining, waiting_now = now, waiting_then


def wait(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
