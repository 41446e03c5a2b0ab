"""The execution fence and the phase-aware worker against real servers (RQ on Redis as the
source, Procrastinate on PostgreSQL as the target, the control plane in the target's database).

Each job is written on both backends with the same cutover id plus its ledger row (as the
Router's dual write does); executions are counted in a table the task writes (fence_tasks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from cutover import adapters
from cutover.control import ControlPlane, LedgerState, Pair
from cutover.control.claims import ClaimState
from cutover.errors import CutoverError
from cutover.fence import PhaseGate
from cutover.metrics import Metrics
from cutover.phases import ORDER, Phase, Side, decide, transition
from cutover.record import JobRecord, JobState
from cutover.worker import Worker, WorkerReport
from tests.integration import fence_tasks
from tests.integration.fence_tasks import registry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Pairing:
    """A source (RQ) and a target (Procrastinate) with the control plane on the target."""

    def __init__(self, redis_url: str, database_url: str) -> None:
        self.source_url, self.target_url = redis_url, database_url
        self.source = adapters.open_backend(redis_url)
        self.target = adapters.open_backend(database_url)
        self.control = ControlPlane(database_url)
        self.control.init()
        sid, tid = self.source.identity(), self.target.identity()
        self.pair = Pair(sid.key, sid.url, tid.key, tid.url)
        self.gates: list[PhaseGate] = []
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(fence_tasks.SCHEMA)

    def set_phase(self, to: Phase) -> None:
        """Walk (forced: the preconditions are the phase commands' tests) to ``to``."""
        while (state := self.control.read_phase()).phase.step < to.step:
            move = transition(state.phase, Phase(ORDER[state.phase.step + 1]))
            self.control.transition(decide(move, {}, force=True, why="test"), why="test",
                                    pair=self.pair, kind="set")

    def dual(self, task: str, *args: Any, target_args: tuple[Any, ...] | None = None
             ) -> JobRecord:
        """Both copies of one job (same cutover id), the target's first, and its ledger row."""
        record = registry.make_record(task, args, {})
        target_copy = record if target_args is None else record.replace(args=target_args)
        self.target.enqueue([target_copy])
        self.control.record([record], state=LedgerState.ACCEPTED, source=self.pair.source_key,
                            target=self.pair.target_key, run_id="fence-test")
        self.source.enqueue([record])
        return record

    def worker(self, side: Side, *, concurrency: int = 3, burst: bool = True,
               lease: float = 30.0, stalled_after: float = 60.0,
               metrics: Metrics | None = None) -> Worker:
        backend = self.source if side is Side.SOURCE else self.target
        gate = PhaseGate(ControlPlane(self.target_url), backend, side,
                         source=self.source if side is Side.TARGET else None, lease=lease,
                         refresh=0.2, metrics=metrics)
        self.gates.append(gate)
        return Worker(backend, registry, concurrency=concurrency, burst=burst,
                      isolation="thread", poll_interval=0.05, stalled_after=stalled_after,
                      gate=gate, metrics=metrics)

    def runs(self, what: str = "done") -> dict[str, int]:
        with psycopg.connect(self.target_url) as conn:
            rows = conn.execute("SELECT key, count(*) FROM fence_runs WHERE what = %s "
                                "GROUP BY key", (what,)).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def close(self) -> None:
        for gate in self.gates:
            gate.close()
            gate.control.close()
        self.source.close()
        self.target.close()
        self.control.close()


def run_all(*workers: Worker) -> list[WorkerReport]:
    reports: list[WorkerReport | None] = [None] * len(workers)

    def one(i: int) -> None:
        try:
            reports[i] = workers[i].run(install_signal_handlers=False)
        finally:
            assert workers[i].gate is not None
            workers[i].gate.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in reports)
    return [r for r in reports if r is not None]


def test_both_fleets_in_live_run_every_dual_written_job_exactly_once(pairing: Pairing) -> None:
    pairing.set_phase(Phase.LIVE)
    jobs = [pairing.dual("fence.count", f"k{i}") for i in range(60)]
    metrics = Metrics()
    reports = run_all(pairing.worker(Side.SOURCE, metrics=metrics),
                      pairing.worker(Side.TARGET, metrics=metrics))
    runs = pairing.runs()
    assert runs == {f"k{i}": 1 for i in range(60)}
    assert sum(r.succeeded for r in reports) == 60
    assert sum(r.duplicates for r in reports) == 60  # each job's other copy, removed
    snap = metrics.snapshot()
    skipped = sum(b.get("duplicates_skipped", 0) for b in snap["backends"].values())
    assert skipped == 60
    for job in jobs:
        claim = pairing.control.claim_of(job.id)
        assert claim is not None and claim.state is ClaimState.DONE
        # One copy completed, the other removed: never a copy left to run.
        left = [b.get(job.id) for b in (pairing.source, pairing.target)]
        assert sum(1 for r in left if r is not None and r.state.live) == 0


def test_shadow_target_records_consistency_and_runs_nothing(pairing: Pairing) -> None:
    pairing.set_phase(Phase.SHADOW)
    good = [pairing.dual("fence.count", f"s{i}") for i in range(5)]
    altered = pairing.dual("fence.count", "orig", target_args=("changed",))
    report = pairing.worker(Side.TARGET).run(install_signal_handlers=False)
    assert report.shadowed == 6 and report.processed == 0
    assert pairing.runs() == {}  # nothing executed on the target
    rate = pairing.control.shadow_rate()
    assert (rate.jobs, rate.matched) == (6, 5)
    bad = dict(pairing.control.shadow_mismatches(10))
    detail = bad[altered.id] or ""
    assert "args" in detail and "changed" in detail and "ledger" in detail and "source" in detail
    for job in [*good, altered]:
        assert pairing.target.get(job.id) is None  # the target copy was removed, not run
        source_copy = pairing.source.get(job.id)
        assert source_copy is not None and source_copy.state.live  # the source runs it


def test_a_kill_9_of_the_claim_holder_runs_the_job_exactly_once(pairing: Pairing) -> None:
    pairing.set_phase(Phase.LIVE)
    job = pairing.dual("fence.slow_first", "victim", 60.0)
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cutover", "--source", pairing.source_url, "--target",
         pairing.target_url, "--app", "tests.integration.fence_tasks:registry", "worker",
         "--backend", "source", "--lease", "2", "--isolation", "process"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while pairing.runs("started").get("victim") != 1:
            assert time.monotonic() < deadline, "the source worker never started the job"
            time.sleep(0.1)
        claim = pairing.control.claim_of(job.id)
        assert claim is not None and claim.state is ClaimState.CLAIMED
        assert claim.side is Side.SOURCE
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # The target's copy waits for the lease (2 s), then takes over and runs it.
    report = pairing.worker(Side.TARGET, concurrency=1, lease=2).run(
        install_signal_handlers=False)
    assert report.succeeded == 1
    claim = pairing.control.claim_of(job.id)
    assert claim is not None and claim.state is ClaimState.DONE and claim.side is Side.TARGET
    assert claim.takeovers == 1
    # The killed worker's copy, recovered as stalled, is a duplicate: removed, not run.
    time.sleep(1.1)
    report = pairing.worker(Side.SOURCE, concurrency=1, stalled_after=1).run(
        install_signal_handlers=False)
    assert report.recovered == [job.id] and report.duplicates == 1 and report.succeeded == 0
    assert pairing.runs() == {"victim": 1}
    assert pairing.runs("started") == {"victim": 2}  # killed once, run to its end once


def test_the_phase_changing_under_a_running_worker_switches_its_mode(pairing: Pairing) -> None:
    pairing.set_phase(Phase.SHADOW)
    worker = pairing.worker(Side.TARGET, burst=False, concurrency=2)
    done: list[WorkerReport] = []
    thread = threading.Thread(target=lambda: done.append(
        worker.run(install_signal_handlers=False)))
    thread.start()
    try:
        shadowed = pairing.dual("fence.count", "in-shadow")
        wait_for(lambda: pairing.control.shadow_rate().jobs == 1)
        assert pairing.runs() == {}
        for phase in (Phase.LIVE, Phase.RAMPDOWN, Phase.COMPLETE):
            pairing.set_phase(phase)
            wait_for(lambda p=phase: worker.gate is not None  # type: ignore[misc]
                     and worker.gate.state().phase is p)
            key = f"in-{phase}"
            pairing.dual("fence.count", key)
            wait_for(lambda k=key: pairing.runs().get(k) == 1)  # type: ignore[misc]
        assert pairing.source.get(shadowed.id) is not None  # shadow left the source's copy
        assert pairing.runs() == {"in-live": 1, "in-rampdown": 1, "in-complete": 1}
        members = pairing.control.alive(kind="worker")
        assert [m.acked_epoch for m in members] == [pairing.control.read_phase().epoch]
    finally:
        worker.stop()
        thread.join(30)
        assert worker.gate is not None
        worker.gate.close()
    assert done and done[0].shadowed == 1 and done[0].succeeded == 3
    assert pairing.control.alive(kind="worker") == []  # deregistered on exit


def test_idle_side_claims_nothing_and_burst_exits(pairing: Pairing) -> None:
    pairing.set_phase(Phase.COMPLETE)
    job = pairing.dual("fence.count", "left")
    report = pairing.worker(Side.SOURCE).run(install_signal_handlers=False)
    assert report.processed == 0 and report.duplicates == 0
    copy = pairing.source.get(job.id)
    assert copy is not None and copy.state.live  # left where it was: the source is out of service


def test_no_control_plane_phase_off_works_as_before(pairing: Pairing) -> None:
    pairing.dual("fence.count", "plain")
    report = pairing.worker(Side.TARGET).run(install_signal_handlers=False)
    assert report.succeeded == 1 and pairing.runs() == {"plain": 1}
    assert pairing.control.claim_of(next(iter([r.id for r in pairing.target.snapshot()]))
                                    ) is None  # epoch 0: no fence


def wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)




def test_status_warns_of_a_native_worker_that_would_bypass_the_fence(pairing: Pairing) -> None:
    import redis
    import rq
    from click.testing import CliRunner

    from cutover.cli import cli

    def warnings() -> list[str]:
        result = CliRunner().invoke(cli, ["--source", pairing.source_url, "--target",
                                          pairing.target_url, "--json", "status"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        return list(doc.get("warnings", []))

    native = rq.Worker(["default"], connection=redis.Redis.from_url(pairing.source_url),
                       name="native-rq-fence")
    native.register_birth()
    pairing.set_phase(Phase.SHADOW)
    assert warnings() == []  # an RQ worker in shadow runs source jobs only: no bypass
    with psycopg.connect(pairing.target_url, autocommit=True) as conn:
        row = conn.execute("SELECT worker_id FROM procrastinate_register_worker_v1()").fetchone()
    assert row is not None
    found = warnings()
    assert len(found) == 1 and f"target procrastinate worker {row[0]}" in found[0]
    with psycopg.connect(pairing.target_url, autocommit=True) as conn:
        conn.execute("DELETE FROM procrastinate_workers WHERE id = %s", (row[0],))
    pairing.set_phase(Phase.LIVE)
    found = warnings()
    assert len(found) == 1 and "source rq worker native-rq-fence" in found[0]
    # A cutover worker on procrastinate registers there too, but declares itself: no warning.
    worker = pairing.worker(Side.TARGET)
    worker.run(install_signal_handlers=False)
    assert pairing.target.worker_ids()  # type: ignore[attr-defined]
    assert len(warnings()) == 1


def test_the_epoch_is_acknowledged_once_no_job_of_the_older_epoch_runs(pairing: Pairing) -> None:
    pairing.set_phase(Phase.LIVE)
    worker = pairing.worker(Side.TARGET, burst=False, concurrency=2)
    thread = threading.Thread(target=lambda: worker.run(install_signal_handlers=False))
    thread.start()
    try:
        gate = worker.gate
        assert gate is not None
        live_epoch = pairing.control.read_phase().epoch
        pairing.dual("fence.slow_first", "long", 3.0)
        wait_for(lambda: pairing.runs("started").get("long") == 1)
        pairing.set_phase(Phase.RAMPDOWN)
        wait_for(lambda: gate.state().phase is Phase.RAMPDOWN)
        time.sleep(0.5)  # the idle thread has asked for its mode under the new epoch
        [member] = pairing.control.alive(kind="worker")
        assert member.acked_epoch == live_epoch  # a job of the live epoch still runs
        wait_for(lambda: pairing.runs().get("long") == 1)
        wait_for(lambda: pairing.control.alive(kind="worker")[0].acked_epoch == live_epoch + 1)
    finally:
        worker.stop()
        thread.join(30)


def test_the_fence_joins_the_transactions_of_a_backend_in_the_planes_database(
        pairing: Pairing) -> None:
    """The target (Procrastinate, the control plane in its database) claims a job and its fence
    claim in one transaction, and records the outcome and the claim's end in one: a failure
    in between leaves neither half. The source (RQ) cannot join: separate statements."""
    pairing.set_phase(Phase.LIVE)
    source_gate = PhaseGate(ControlPlane(pairing.target_url), pairing.source, Side.SOURCE)
    target_gate = PhaseGate(ControlPlane(pairing.target_url), pairing.target, Side.TARGET)
    pairing.gates += [source_gate, target_gate]
    assert source_gate.joined is None and target_gate.joined is pairing.target
    joined = target_gate.joined
    job = pairing.dual("fence.count", "joined")

    def broken(conn: Any, *_: Any) -> None:
        conn.execute("SELECT 1/0")

    with pytest.raises(CutoverError):  # the claim's statement fails: the job is not started
        joined.claim_tx(None, "w1", lambda r: None,
                        lambda conn, j: (target_gate.claim(j, conn), broken(conn)))
    waiting = pairing.target.get(job.id)
    assert waiting is not None and waiting.state is JobState.QUEUED
    assert pairing.control.claim_of(job.id) is None
    claims: list[Any] = []
    started = joined.claim_tx(None, "w1", lambda r: None,
                              lambda conn, j: claims.append(target_gate.claim(j, conn)))
    assert started is not None and started.id == job.id and claims[0].won
    with pytest.raises(CutoverError):  # the outcome fails: the claim is not finished either
        joined.complete_tx(started, "w1", None, lambda conn: (
            target_gate.finish(started, ClaimState.DONE, conn), broken(conn)))
    claim = pairing.control.claim_of(job.id)
    assert claim is not None and claim.state is ClaimState.CLAIMED
    running = pairing.target.get(job.id)
    assert running is not None and running.state is JobState.STARTED
    checks: list[Any] = []  # the worker's way: the finish queued, its answer read after
    joined.complete_tx(started, "w1", None, lambda conn: checks.append(
        target_gate.finish_in(started, ClaimState.DONE, conn)))
    checks[0]()
    claim = pairing.control.claim_of(job.id)
    assert claim is not None and claim.state is ClaimState.DONE
    done = pairing.target.get(job.id)
    assert done is not None and done.state is JobState.FINISHED
    answers: list[Any] = []  # a claim not held: the answer says so after the commit
    joined.run_tx(lambda conn: answers.append(pairing.control.finish_later(
        job.id, uuid.uuid4(), ClaimState.DONE, conn)))
    assert answers[0]() is False
    answers.clear()  # the holder's finish run again (a retry after an unknown outcome): true
    joined.run_tx(lambda conn: answers.append(pairing.control.finish_later(
        job.id, target_gate.member, ClaimState.DONE, conn)))
    assert answers[0]() is True


def test_prune_claims_deletes_only_finished_claims_no_copy_needs(pairing: Pairing) -> None:
    """A finished claim whose job has no live copy goes; one whose other copy still waits (it
    would run again without the claim) stays, as do claims still held and claims finished
    within the grace; nothing while a drain holds the pair's lock; bounded by limit."""
    from cutover.errors import PreconditionError
    from cutover.fence import prune_claims

    pairing.set_phase(Phase.LIVE)
    jobs = [pairing.dual("fence.count", f"p{i}") for i in range(4)]
    run_all(pairing.worker(Side.TARGET))  # each job runs on the target: its claim is done,
    # its source copy still waits (no source worker ran): the claim must stay
    member = pairing.gates[-1].member
    settled, waiting = jobs[:2], jobs[2:]
    pairing.source.remove([j.id for j in settled])  # these copies are gone: no copy is live
    held = pairing.dual("fence.count", "held")
    pairing.control.claim(held.id, Side.SOURCE, member)  # claimed, never finished
    assert prune_claims(pairing.control, pairing.source, pairing.target).deleted == 0  # grace
    with psycopg.connect(pairing.target_url, autocommit=True) as conn:
        conn.execute("UPDATE cutover.claims SET finished_at = now() - interval '2 days' "
                     "WHERE state <> 'claimed'")
    drain = ControlPlane(pairing.target_url)
    try:
        assert drain.lock_pair(pairing.pair.target_key, pairing.pair.source_key)
        with pytest.raises(PreconditionError):
            prune_claims(pairing.control, pairing.source, pairing.target)
    finally:
        drain.close()  # its session lock ends with it
    first = prune_claims(pairing.control, pairing.source, pairing.target, limit=1)
    assert first.deleted == 1 and first.kept == []  # the oldest finished claim: settled
    report = prune_claims(pairing.control, pairing.source, pairing.target)
    assert report.deleted == 1 and report.kept == sorted(j.id for j in waiting)
    for job in settled:
        assert pairing.control.claim_of(job.id) is None
    for job in waiting:
        claim = pairing.control.claim_of(job.id)
        assert claim is not None and claim.state is ClaimState.DONE
    still = pairing.control.claim_of(held.id)
    assert still is not None and still.state is ClaimState.CLAIMED
    # The waiting copies are duplicates still: a source worker removes them without a run.
    pairing.source.remove([held.id])
    report_source = pairing.worker(Side.SOURCE).run(install_signal_handlers=False)
    assert report_source.duplicates == 2 and pairing.runs() == {f"p{i}": 1 for i in range(4)}
    # Now that they were removed, the command prunes their claims too.
    from click.testing import CliRunner

    from cutover.cli import cli
    result = CliRunner().invoke(cli, ["--source", pairing.source_url, "--target",
                                      pairing.target_url, "--json", "prune-claims"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"deleted": 2, "kept": []}
