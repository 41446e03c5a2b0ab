"""Control-plane blips are survived, not escalated (issue 13, item 4).

Before: the fence ran each verb once. A connection terminated at the end of a job made its
``finish`` fail, the worker stop, the claim's lease expire and the other copy run the job again
(6 of 36 with one ``pg_terminate_backend`` per round), both copies recorded as failed; a blip
right after an RQ claim failed the job for good without running it ("its worker died while
running it"). Now the plane's statements are retried on a new connection (the fence's verbs
answer the same when run again), a finish is retried with the claim kept, and a claim that
could not be made gives the job back to its queue, waiting, no attempt used.

Executions are counted from the task's side: ``blip_runs``, written by the task
(tests/integration/blip_tasks.py), in a database of its own that no kill touches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cutover_rq import RQBackend

from cutover import Router
from cutover.control import ControlPlane
from cutover.errors import CutoverError
from cutover.fence import PhaseGate
from cutover.phases import Phase, Side
from cutover.record import JobState
from cutover.worker import Worker
from tests.integration import blip_tasks
from tests.integration.blip_tasks import registry
from tests.integration.control_db import ControlDatabase, control_database
from tests.integration.drain_helpers import invoke

pytestmark = [pytest.mark.rq, pytest.mark.pg]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINE = "blip_test"  # the application_name of the test's own sessions: never killed


def _mine(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={MINE}"


def _kill(database: str) -> int:
    """Terminate every client session of ``database`` but the test's own: how many."""
    with psycopg.connect(_mine(ROOT_URL[0]), autocommit=True) as conn:
        row = conn.execute(blip_tasks.KILL, (database,)).fetchone()
    return int(row[0]) if row else 0


ROOT_URL: list[str] = []  # a URL of the server, set by the fixtures (for _kill)


def _runs(url: str) -> dict[str, int]:
    with psycopg.connect(_mine(url)) as conn:
        rows = conn.execute("SELECT key, count(*) FROM blip_runs GROUP BY key").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _walk(source: str, target: str, *control: str) -> None:
    assert invoke(source, target, *control, "init", "--yes").exit_code == 0
    for _ in range(2):  # off -> shadow -> live (forced: no workers needed to move)
        result = invoke(source, target, *control, "phase", "advance", "--yes", "--force",
                        "--why", "test")
        assert result.exit_code == 0, result.output


@pytest.fixture
def runs_db(cutover_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The tasks' own table, in a database of its own (no kill reaches it)."""
    ROOT_URL[:] = [cutover_database_url]
    with control_database(cutover_database_url) as db:
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute(blip_tasks.SCHEMA)
        monkeypatch.setenv("BLIP_RUNS_URL", db.url)
        yield db.url


def _db_name(url: str) -> str:
    return url.split("?", 1)[0].rsplit("/", 1)[1]


def _live_and_failed(source: str, target: str) -> tuple[int, int]:
    """(live copies, failed jobs) on both backends, read by the test's own sessions."""
    backend = RQBackend(source)
    try:
        counts = backend.counts()
    finally:
        backend.close()
    live = sum(n for per in counts.values() for s, n in per.items() if s.live)
    failed = sum(per.get(JobState.FAILED, 0) for per in counts.values())
    with psycopg.connect(_mine(target)) as conn:
        rows = conn.execute("SELECT status::text, count(*) FROM procrastinate_jobs "
                            "GROUP BY status").fetchall()
    by = {str(r[0]): int(r[1]) for r in rows}
    return live + by.get("todo", 0) + by.get("doing", 0), failed + by.get("failed", 0)


def _workers(target: str) -> int:
    """Workers of the fleet that heartbeat a mode (their start-up is behind them)."""
    with psycopg.connect(_mine(target)) as conn:
        row = conn.execute("SELECT count(*) FROM cutover.fleet WHERE kind = 'worker' "
                           "AND mode IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def _spawn(source: str, target: str, side: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": ROOT, "BLIP_KILL_DB": _db_name(target)}
    return subprocess.Popen(
        [sys.executable, "-m", "cutover", "--source", source, "--target", target, "--app",
         "tests.integration.blip_tasks:registry", "worker", "--backend", side,
         "--concurrency", "2", "--isolation", "thread", "--poll-interval", "0.05",
         "--lease", "5"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def test_control_sessions_terminated_at_the_end_of_jobs_and_mid_walk(
        cutover_redis_url: str, cutover_database_url: str, runs_db: str,
        tmp_path: Path) -> None:
    """Both fleets (real worker processes) in live, the control plane in the target's
    database; every sixth job terminates every control-plane session of both fleets as it
    ends (just before its finish), and a killer does so every 3 s besides. Mid-run the walk
    goes on to rampdown (forced) and more jobs come, the target's only. Every job runs exactly
    once, none is recorded as failed, and no worker stops."""
    source, target = cutover_redis_url, cutover_database_url
    _walk(source, target)
    n = 60
    logs = {side: tmp_path / f"{side}.log" for side in ("source", "target")}
    procs = {side: _spawn(source, target, side, log) for side, log in logs.items()}
    deadline = time.monotonic() + 60
    while _workers(target) < 2:  # both fleets up (the blips are for running workers)
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values())
        time.sleep(0.2)
    # The Router's sessions are the test's own (never killed): the jobs are written once.
    with Router(registry, source=source, target=_mine(target)) as router:
        assert router.phase is Phase.LIVE
        for i in range(n):  # both copies of each, its ledger row
            router.enqueue("blip.count", f"k{i}", kill=(i % 6 == 0), pause=0.2)
    stop = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        while not stop.wait(3.0):
            kills.append(_kill(_db_name(target)))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        time.sleep(1.5)  # live jobs running: the walk goes on (the command's sessions are ours)
        result = invoke(source, _mine(target), "phase", "advance", "--yes", "--force", "--why",
                        "blip walk")
        assert result.exit_code == 0, result.output
        with Router(registry, source=source, target=_mine(target)) as router:
            assert router.phase is Phase.RAMPDOWN
            for i in range(n, n + 30):  # the target's only
                router.enqueue("blip.count", f"k{i}", kill=(i % 6 == 0), pause=0.1)
        n += 30
        deadline = time.monotonic() + 150
        while True:
            for side, proc in procs.items():
                assert proc.poll() is None, (
                    f"the {side} worker stopped (exit {proc.returncode}):\n"
                    + logs[side].read_text()[-3000:])
            runs = _runs(runs_db)
            live, failed = _live_and_failed(source, target)
            if len(runs) == n and live == 0:
                break
            assert time.monotonic() < deadline, (runs, live, failed)
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(5)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(60)
    assert sum(kills) > 0  # the killer did cut sessions
    text = "".join(log.read_text() for log in logs.values())
    # The blips must have met the fleet's statements (else the test proved nothing). Which
    # statement meets one is the machine's timing: a finish on the plane's own connection
    # (the RQ side), an outcome transaction (the target's: "settling the claim"), or, when the
    # target's pool replaced a killed connection silently as it lent it, a claim, an extend or
    # a heartbeat.
    assert "connection lost while" in text or "settling the claim" in text, \
        "no statement met a terminated connection: the test proved nothing"
    # A finish run again after an unknown outcome (a pipelined outcome transaction that
    # committed as its connection went) answers true: never "taken over".
    assert "claim had been taken over" not in text
    assert _runs(runs_db) == {f"k{i}": 1 for i in range(n)}
    assert _live_and_failed(source, target) == (0, 0)
    assert all(proc.returncode == 0 for proc in procs.values()), text[-3000:]


def _gate(control_url: str, backend: Any) -> PhaseGate:
    return PhaseGate(ControlPlane(control_url), backend, Side.SOURCE, refresh=0.2)


@pytest.mark.parametrize("fault", ["terminated", "unreachable"])
def test_a_connection_lost_right_after_a_claim_leaves_the_job_waiting(
        cutover_redis_url: str, cutover_database_url: str, runs_db: str, fault: str) -> None:
    """An RQ worker (the control plane in a database of its own) claims a job, and its control
    connection is terminated at once (``terminated``: the claim is made on a new connection,
    the job runs once) or the plane stays unreachable (``unreachable``: the job is given back
    to its queue, waiting, no attempt used; the worker stops; once the plane is back the job
    runs once). Never failed (max_attempts=1: before, it was failed for good unrun)."""
    source, target = cutover_redis_url, cutover_database_url
    with control_database(target) as ctl:
        _walk(source, target, "--control", ctl.url)
        backend = RQBackend(source)
        job = backend.enqueue([registry.make_record("blip.count", ("c1",), {})])[0]
        real = backend.claim
        fired: list[bool] = []

        def claim_then_cut(*args: Any, **kwargs: Any) -> Any:
            got = real(*args, **kwargs)
            if got is not None and not fired:
                fired.append(True)
                _cut(ctl, fault)
            return got

        backend.claim = claim_then_cut  # type: ignore[method-assign]
        gate = _gate(ctl.url, backend)
        try:
            worker = Worker(backend, registry, burst=True, isolation="thread",
                            poll_interval=0.05, gate=gate)
            if fault == "terminated":
                report = worker.run(install_signal_handlers=False)
                assert report.succeeded == 1 and report.failed == 0
            else:
                with pytest.raises(CutoverError):
                    worker.run(install_signal_handlers=False)
                waiting = backend.get(job)
                assert waiting is not None and waiting.state is JobState.QUEUED, waiting
                assert waiting.attempts == 0
                assert _runs(runs_db) == {}
                ctl.restore()
        finally:
            gate.close()
            gate.control.close()
        assert fired
        if fault == "unreachable":  # the plane is back: the job runs, once
            again = _gate(ctl.url, backend)
            try:
                report = Worker(backend, registry, burst=True, isolation="thread",
                                poll_interval=0.05, stalled_after=1.0, gate=again).run(
                    install_signal_handlers=False)
            finally:
                again.close()
                again.control.close()
            assert report.succeeded == 1 and report.failed == 0 and not report.recovered
        done = backend.get(job)
        backend.close()
        assert done is not None and done.state is JobState.FINISHED
        assert _runs(runs_db) == {"c1": 1}


def _cut(ctl: ControlDatabase, fault: str) -> None:
    if fault == "terminated":
        assert _kill(ctl.name) > 0
    else:
        ctl.cut()


def test_each_fence_verb_run_again_by_its_holder_gives_the_same_answer(
        cutover_database_url: str) -> None:
    """What a retry after an unknown outcome (the statement committed, its answer lost) meets:
    the same verb run again by the same member. It must answer as the first run did; a finish
    that answered False would be logged as a takeover and, worse, read as one."""
    import uuid

    from cutover.control.claims import ClaimState

    plane = ControlPlane(cutover_database_url)
    try:
        plane.init()
        me, other = uuid.uuid4(), uuid.uuid4()
        first = plane.claim("v1", Side.SOURCE, me, 30.0)
        again = plane.claim("v1", Side.SOURCE, me, 30.0)
        assert first.won and again.won and again.takeovers == 0
        assert not plane.claim("v1", Side.TARGET, other, 30.0).won
        assert plane.extend("v1", me) and plane.extend("v1", me)
        assert plane.finish("v1", me, ClaimState.DONE)
        assert plane.finish("v1", me, ClaimState.DONE)  # run again: still true
        assert not plane.finish("v1", other, ClaimState.DONE)  # never held: false
        assert not plane.claim("v1", Side.SOURCE, me, 30.0).won  # finished: never again
        assert plane.claim("v2", Side.SOURCE, me, 30.0).won
        assert plane.release("v2", me) and plane.release("v2", me)
        claim = plane.claim_of("v2")
        assert claim is not None and claim.state is ClaimState.CLAIMED
    finally:
        plane.close()


def test_a_worker_stopped_while_waiting_on_the_other_copys_claim_gives_the_job_back(
        cutover_redis_url: str, cutover_database_url: str, runs_db: str) -> None:
    """A worker stopped (a blip's stop, a SIGTERM) while its copy waits on a claim the other
    side holds gives the copy back, waiting, no attempt used: before, it was failed (for good
    with max_attempts=1) while the other copy ran."""
    import uuid

    source, target = cutover_redis_url, cutover_database_url
    _walk(source, target)
    backend = RQBackend(source)
    plane = ControlPlane(target)
    record = registry.make_record("blip.count", ("w1",), {})
    job = backend.enqueue([record])[0]
    # The other side's copy of this enqueue (the same stamp) holds the claim.
    assert plane.claim(job, Side.TARGET, uuid.uuid4(), 120.0, stamp=record.created_at).won
    gate = _gate(target, backend)
    worker = Worker(backend, registry, isolation="thread", poll_interval=0.05, gate=gate)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while (got := backend.get(job)) is None or got.state is not JobState.STARTED:
            assert time.monotonic() < deadline, "the worker never took the job"
            time.sleep(0.05)
        time.sleep(0.3)  # waiting on the claim
    finally:
        worker.stop()
        thread.join(30)
        gate.close()
        gate.control.close()
        plane.close()
    back = backend.get(job)
    backend.close()
    assert back is not None and back.state is JobState.QUEUED and back.attempts == 0, back
    assert _runs(runs_db) == {}


@pytest.mark.parametrize("outage", [3.0, 12.0])
def test_a_plane_unreachable_as_a_job_ends_finishes_it_when_back_or_records_it_anyway(
        cutover_redis_url: str, cutover_database_url: str, runs_db: str,
        outage: float) -> None:
    """The task cuts the control plane off as it ends (every connection refused) and it comes
    back ``outage`` seconds later. The worker keeps the claim and tries the finish again for
    its patience (5 s here, plus the last try's own ~4 s of retries): back within it (3 s), the
    claim is finished and the outcome recorded, nothing stops; not back (12 s), the outcome is
    recorded all the same (succeeded, never "its worker died") and the worker stops, its claim
    still held."""
    from cutover.control.claims import ClaimState
    from cutover.registry import TaskRegistry

    source, target = cutover_redis_url, cutover_database_url
    with control_database(target) as ctl:
        _walk(source, target, "--control", ctl.url)
        local = TaskRegistry()

        @local.task(name="blip.cut")
        def cut(key: str) -> str:
            blip_tasks.count(key)
            ctl.cut()
            threading.Timer(outage, ctl.restore).start()
            return key

        backend = RQBackend(source)
        job = backend.enqueue([local.make_record("blip.cut", ("o1",), {})])[0]
        gate = _gate(ctl.url, backend)
        gate.finish_patience = 5.0
        worker = Worker(backend, local, burst=True, isolation="thread", poll_interval=0.05,
                        gate=gate)
        try:
            if outage < 5.0:
                report = worker.run(install_signal_handlers=False)
                assert report.succeeded == 1
            else:
                with pytest.raises(CutoverError):
                    worker.run(install_signal_handlers=False)
                assert worker.report.succeeded == 1
        finally:
            gate.close()
            gate.control.close()
        deadline = time.monotonic() + outage + 5.0
        while True:  # the plane is back
            try:
                with psycopg.connect(ctl.url):
                    break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        done = backend.get(job)
        backend.close()
        assert done is not None and done.state is JobState.FINISHED, done
        plane = ControlPlane(ctl.url)
        try:
            claim = plane.claim_of(job)
        finally:
            plane.close()
        assert claim is not None and claim.member == gate.member
        assert claim.state is (ClaimState.DONE if outage < 5.0 else ClaimState.CLAIMED)
        assert _runs(runs_db) == {"o1": 1}


@pytest.mark.parametrize("where", ["start", "outcome"])
def test_a_connection_lost_in_a_joined_transaction_is_survived(
        cutover_redis_url: str, cutover_database_url: str, runs_db: str, where: str) -> None:
    """The target (Procrastinate, the control plane in its database: PhaseGate.joined) claims
    a job with its fence claim in one transaction and records the outcome with the claim's
    finish in another. Its own session is terminated in the first (``start``: both roll back,
    the job stays waiting; the claim is tried again) or in the second (``outcome``: the claim
    is finished on the plane's own connection, then the outcome recorded): the job runs once,
    succeeds, and the worker goes on. Before, the worker stopped either way."""
    from cutover_procrastinate import ProcrastinateBackend

    from cutover.control.claims import ClaimState

    source, target = cutover_redis_url, cutover_database_url
    _walk(source, target)
    with Router(registry, source=source, target=target) as router:
        job = router.enqueue("blip.count", "j1")
    backend = ProcrastinateBackend(target)
    gate = PhaseGate(ControlPlane(target), backend, Side.TARGET, refresh=0.2)
    assert gate.joined is backend
    suicide = "SELECT pg_terminate_backend(pg_backend_pid())"
    fired: list[str] = []
    real_claim, real_complete = backend.claim_tx, backend.complete_tx

    def claim_tx(queues: Any, worker: str, accept: Any, hook: Any) -> Any:
        def dying(conn: Any, j: Any) -> None:
            if not fired:
                fired.append("start")
                conn.execute(suicide)
            hook(conn, j)
        return real_claim(queues, worker, accept, dying if where == "start" else hook)

    def complete_tx(j: Any, worker: str, result: Any, hook: Any) -> None:
        def dying(conn: Any) -> None:
            hook(conn)
            if not fired:
                fired.append("outcome")
                conn.execute(suicide)
        real_complete(j, worker, result, dying if where == "outcome" else hook)

    backend.claim_tx = claim_tx  # type: ignore[method-assign]
    backend.complete_tx = complete_tx  # type: ignore[method-assign]
    try:
        report = Worker(backend, registry, burst=True, isolation="thread", poll_interval=0.05,
                        gate=gate).run(install_signal_handlers=False)
        assert fired == [where]
        assert report.succeeded == 1 and report.failed == 0
        claim = gate.control.claim_of(job)
        assert claim is not None and claim.state is ClaimState.DONE
        assert claim.member == gate.member and claim.takeovers == 0
        done = backend.get(job)
        assert done is not None and done.state is JobState.FINISHED
    finally:
        gate.close()
        gate.control.close()
        backend.close()
    assert _runs(runs_db) == {"j1": 1}
