"""The fence claims one *enqueue* of a job, not its id, and gives both copies one budget.

Against real servers (RQ source, Procrastinate target with the control plane), executions
counted from the tasks' side (``fence_runs``, written by tests/integration/fence_tasks.py):

- a job id enqueued again by plain RQ code, an RQ requeue (``Job.requeue()`` and ``rq
  requeue``) of a failed job, procrastinate's ``retry_job_by_id`` of a failed job: each runs,
  in every phase whose workers run that side (issue 13, defect 3: they were removed as
  "duplicates" of the earlier job's finished claim);
- the other copy of one dual write, and a copy recovered after a crash between the claim's
  finish and the backend's record, are still duplicates;
- a fenced retry in live (both fleets running): the budget is one across both copies, and the
  backoff holds: no copy runs before the retry time (defect 6: max_attempts=3 ran 4-5 times, a
  0.5 s backoff became 49 ms).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import procrastinate
import psycopg
import pytest
import redis
import rq
from procrastinate import sql as procrastinate_sql

from cutover.control import LedgerState
from cutover.control.claims import ClaimState
from cutover.phases import Phase, Side, decide, transition
from cutover.record import JobRecord, JobState
from tests.integration.fence_tasks import registry
from tests.integration.test_fence import ROOT, Pairing

pytestmark = [pytest.mark.rq, pytest.mark.pg]


def to_phase(pairing: Pairing, phase: str) -> None:
    """``off+`` is off after a rollback from live (epoch > 0: the source runs fenced)."""
    if phase == "off+":
        pairing.set_phase(Phase.LIVE)
        state = pairing.control.read_phase()
        pairing.control.transition(decide(transition(state.phase, Phase.OFF), {}, force=True,
                                          why="test"), why="test", pair=pairing.pair,
                                   kind="rollback")
        assert pairing.control.read_phase().phase is Phase.OFF
    else:
        pairing.set_phase(Phase(phase))


def times(pairing: Pairing, key: str) -> list[tuple[str, dt.datetime]]:
    """The task's own trace of ``key``: (what, when), in order."""
    with psycopg.connect(pairing.target_url) as conn:
        rows = conn.execute("SELECT what, at FROM fence_runs WHERE key = %s ORDER BY at",
                            (key,)).fetchall()
    return [(str(r[0]), r[1]) for r in rows]


def burst(pairing: Pairing, side: Side) -> None:
    pairing.worker(side, concurrency=1).run(install_signal_handlers=False)


def plain_rq(pairing: Pairing) -> rq.Queue:
    return rq.Queue("default", connection=redis.Redis.from_url(pairing.source_url))


# -- a reused id, a requeue, a retry by the backend's own tools: each runs -------------------
@pytest.mark.parametrize("phase", ["off+", "shadow", "live", "rampdown"])
def test_a_job_id_enqueued_again_by_plain_rq_code_runs_each_time(pairing: Pairing,
                                                                 phase: str) -> None:
    to_phase(pairing, phase)
    queue = plain_rq(pairing)
    for n in range(1, 4):  # a nightly job with a fixed id
        queue.enqueue("fence.count", "nightly", job_id="nightly-report")
        burst(pairing, Side.SOURCE)
        assert pairing.runs() == {"nightly": n}
    with psycopg.connect(pairing.target_url) as conn:  # one claim per enqueue, by cutover_id
        rows = conn.execute("SELECT generation, state FROM cutover.claims WHERE cutover_id = "
                            "'nightly-report' ORDER BY generation").fetchall()
    assert rows == [(1, "done"), (2, "done"), (3, "done")]


@pytest.mark.parametrize("how", ["Job.requeue", "rq requeue"])
@pytest.mark.parametrize("phase", ["off+", "shadow", "live", "rampdown"])
def test_an_rq_requeue_of_a_failed_job_runs_it_again(pairing: Pairing, phase: str,
                                                     how: str) -> None:
    to_phase(pairing, phase)
    job = plain_rq(pairing).enqueue("fence.fails_once", "requeued", job_id="rq-requeued")
    burst(pairing, Side.SOURCE)
    failed = pairing.source.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.error is not None and "planned failure" in failed.error
    if how == "Job.requeue":
        rq.job.Job.fetch(job.id, connection=redis.Redis.from_url(pairing.source_url)).requeue()
    else:
        out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rq"), "requeue",
                              "--url",
                              pairing.source_url, "--queue", "default", job.id],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    burst(pairing, Side.SOURCE)
    assert pairing.runs("run") == {"requeued": 2} and pairing.runs() == {"requeued": 1}
    done = pairing.source.get(job.id)
    assert done is not None and done.state is JobState.FINISHED


def test_an_rq_requeue_in_live_runs_and_the_other_copy_stays_a_duplicate(
        pairing: Pairing) -> None:
    """The dual-written job fails for good on RQ; its RQ copy is requeued: it runs again
    there, and the target's copy of that enqueue is removed without running."""
    pairing.set_phase(Phase.LIVE)
    job = pairing.dual("fence.fails_once", "dual-requeued")
    burst(pairing, Side.SOURCE)
    failed = pairing.source.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    rq.job.Job.fetch(job.id, connection=redis.Redis.from_url(pairing.source_url)).requeue()
    burst(pairing, Side.SOURCE)
    assert pairing.runs("run") == {"dual-requeued": 2}
    report = pairing.worker(Side.TARGET).run(install_signal_handlers=False)
    assert report.duplicates == 1 and report.processed == 0
    assert pairing.target.get(job.id) is None
    assert pairing.runs("run") == {"dual-requeued": 2} and pairing.runs() == {"dual-requeued": 1}


def procrastinate_retry(pairing: Pairing, job: JobRecord) -> None:
    """procrastinate's own ``JobManager.retry_job_by_id`` (its ``retry_job`` query)."""
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(
        conninfo=pairing.target_url))
    with app.open():
        app.job_manager.retry_job_by_id(int(job.native_id or 0), retry_at=dt.datetime.now(dt.UTC))
    assert "retry_job" in procrastinate_sql.queries


@pytest.mark.parametrize("phase", ["live", "rampdown", "complete"])
def test_a_procrastinate_retry_of_a_failed_job_runs_it_again(pairing: Pairing,
                                                            phase: str) -> None:
    pairing.set_phase(Phase(phase))
    record = registry.make_record("fence.fails_once", ("retried",), {})
    if phase == "live":
        record = pairing.dual("fence.fails_once", "retried")
    else:  # rampdown and complete: the Router writes the target only
        pairing.target.enqueue([record])
        pairing.control.record([record], state=LedgerState.ACCEPTED,
                               source=pairing.pair.source_key, target=pairing.pair.target_key,
                               run_id="fence-test")
    burst(pairing, Side.TARGET)
    failed = pairing.target.get(record.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.error is not None and "planned failure" in failed.error
    procrastinate_retry(pairing, failed)
    burst(pairing, Side.TARGET)
    assert pairing.runs("run") == {"retried": 2} and pairing.runs() == {"retried": 1}
    done = pairing.target.get(record.id)
    assert done is not None and done.state is JobState.FINISHED
    if phase == "live":  # the source's copy of that enqueue: a duplicate
        report = pairing.worker(Side.SOURCE).run(install_signal_handlers=False)
        assert report.duplicates == 1 and report.processed == 0
        assert pairing.runs("run") == {"retried": 2}


def test_a_copy_recovered_after_the_claims_finish_is_still_a_duplicate(
        pairing: Pairing) -> None:
    """A worker finished the claim and died before the backend's record: its copy, recovered
    as stalled (the attempt counted by the backend), is that enqueue's copy, not a requeue."""
    pairing.set_phase(Phase.LIVE)
    job = pairing.dual("fence.flaky", "recovered", 0)  # 3 attempts: recovery retries it
    gate = pairing.worker(Side.SOURCE).gate
    assert gate is not None
    taken = pairing.source.claim(None, "dead-worker", lambda r: None)
    assert taken is not None and taken.id == job.id
    claim = gate.claim(taken)
    assert claim.won
    gate.finish(taken, ClaimState.DONE)  # ... and the worker died: no record on RQ
    time.sleep(1.1)
    assert pairing.source.recover_stalled(1.0) == [job.id]
    recovered = pairing.source.get(job.id)
    assert recovered is not None and recovered.state.live and recovered.attempts == 1
    again = gate.claim(recovered)  # a worker meeting it before the recoverer removes it
    assert not again.won and again.finished and again.generation == claim.generation
    time.sleep(0.6)  # its retry (0.5 s) is due
    for side in (Side.SOURCE, Side.TARGET):
        report = pairing.worker(side).run(install_signal_handlers=False)
        assert report.processed == 0
    assert pairing.runs("run") == {}  # the one run was the dead worker's (its claim: done)
    assert pairing.source.get(job.id) is None and pairing.target.get(job.id) is None


# -- one budget across both copies, the backoff honoured --------------------------------------
def run_both_until(pairing: Pairing, done: Callable[[], bool], timeout: float = 60) -> None:
    """Both fleets (non-burst: retries are scheduled) until ``done``."""
    workers = [pairing.worker(Side.SOURCE, burst=False, concurrency=2),
               pairing.worker(Side.TARGET, burst=False, concurrency=2)]
    threads = [threading.Thread(target=w.run, kwargs={"install_signal_handlers": False})
               for w in workers]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the job never settled"
            time.sleep(0.1)
        time.sleep(1.5)  # long enough for a run beyond the budget, or a late duplicate
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)


def settled(pairing: Pairing, job: JobRecord) -> bool:
    copies = [b.get(job.id) for b in (pairing.source, pairing.target)]
    return all(c is None or not c.state.live for c in copies)


def test_a_fenced_retry_in_live_fails_retries_succeeds_within_one_budget(
        pairing: Pairing) -> None:
    """fence.flaky fails twice, then succeeds: 3 runs in all, across both copies (the budget
    used), each retry no earlier than its backoff after the failure (0.5 s, then 1 s). A claim
    marked failed on a retryable failure would stop it after one run; one released at once
    would run the next attempt on the other side within milliseconds."""
    pairing.set_phase(Phase.LIVE)
    job = pairing.dual("fence.flaky", "flaky", 2)
    run_both_until(pairing, lambda: settled(pairing, job))
    assert pairing.runs("run") == {"flaky": 3} and pairing.runs("failed") == {"flaky": 2}
    assert pairing.runs() == {"flaky": 1}
    trace = times(pairing, "flaky")
    assert [w for w, _ in trace] == ["run", "failed", "run", "failed", "run", "done"]
    for failed_at, next_run, backoff in ((trace[1][1], trace[2][1], 0.5),
                                         (trace[3][1], trace[4][1], 1.0)):
        assert (next_run - failed_at).total_seconds() >= backoff  # noise only upward
    claim = pairing.control.claim_of(job.id)
    assert claim is not None and claim.state is ClaimState.DONE and claim.attempts == 3
    finished = [c for b in (pairing.source, pairing.target) if (c := b.get(job.id)) is not None]
    assert [c.state for c in finished] == [JobState.FINISHED]  # the other copy: removed


def test_a_spent_budget_is_exactly_max_attempts_runs_across_both_copies(
        pairing: Pairing) -> None:
    """fence.flaky failing every time (max_attempts=3): three runs across both copies, then
    failed for good where the last one ran, with its error; the other copy removed."""
    pairing.set_phase(Phase.LIVE)
    job = pairing.dual("fence.flaky", "hopeless", 99)
    run_both_until(pairing, lambda: settled(pairing, job))
    assert pairing.runs("run") == {"hopeless": 3} and pairing.runs() == {}
    claim = pairing.control.claim_of(job.id)
    assert claim is not None and claim.state is ClaimState.FAILED and claim.attempts == 3
    left = [c for b in (pairing.source, pairing.target) if (c := b.get(job.id)) is not None]
    assert len(left) == 1 and left[0].state is JobState.FAILED
    assert left[0].error is not None and "planned failure of execution 3" in left[0].error



def test_one_budget_across_two_worker_processes(pairing: Pairing) -> None:
    """The same, with each fleet a ``cutover worker`` process (process isolation): fence.flaky
    failing every time runs 3 times in all, whichever process runs which attempt."""
    pairing.set_phase(Phase.LIVE)
    jobs = [pairing.dual("fence.flaky", f"proc{i}", 99) for i in range(3)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "cutover", "--source", pairing.source_url, "--target",
         pairing.target_url, "--app", "tests.integration.fence_tasks:registry", "worker",
         "--backend", backend, "--isolation", "process", "--concurrency", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for backend in ("source", "target")]
    try:
        deadline = time.monotonic() + 90
        while not all(settled(pairing, job) for job in jobs):
            assert time.monotonic() < deadline, "the jobs never settled"
            time.sleep(0.2)
        time.sleep(1.5)  # long enough for a run beyond the budget
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
    assert pairing.runs("run") == {f"proc{i}": 3 for i in range(3)}
    for job in jobs:
        left = [c for b in (pairing.source, pairing.target) if (c := b.get(job.id)) is not None]
        assert len(left) == 1 and left[0].state is JobState.FAILED
        assert left[0].error is not None and "planned failure of execution 3" in left[0].error
