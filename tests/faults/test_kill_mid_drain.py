"""Proof: kill -9 lands on a drain while it is moving jobs (asserted, not hoped for), the re-run
leaves every job in exactly one place, and then every moved job runs exactly once, counted by
the task itself in a Redis hash (not by the toolkit's ledger or worker reports)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import redis
import rq

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.record import JobRecord, JobState
from tests.faults import tally
from tests.faults.test_drain_faults import assert_one_place
from tests.integration.drain_helpers import invoke, run_cli

pytestmark = [pytest.mark.rq, pytest.mark.pg, pytest.mark.slow]

JOBS = 2000
BATCH = "3"  # small batches: the drain is busy putting and releasing, not idle between batches


def on_target(target: QueueBackend) -> int:
    return sum(sum(per.values()) for per in target.counts().values())


def kill_while_moving(src_url: str, tgt_url: str, target: QueueBackend, total: int,
                      rng: random.Random) -> int:
    """Start a drain, wait until the target shows it moving, kill -9 it a random moment later,
    and prove the kill landed on a running drain mid-way. Returns the jobs on the target."""
    before = on_target(target)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cutover", "--app", tally.APP, "--source", src_url,
         "--target", tgt_url, "drain", "--yes", "--batch-size", BATCH],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while on_target(target) <= before:
        assert proc.poll() is None, f"the drain exited before moving anything: {proc.stderr}"
        assert time.monotonic() < deadline, "the drain moved nothing in 60 s"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.2))
    assert proc.poll() is None, ("the drain finished before the kill; the kill proves nothing "
                                 "(make the backlog bigger)")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    after = on_target(target)
    assert before < after < total, f"the kill did not land mid-drain: {before} -> {after}"
    return after


@pytest.mark.parametrize(("direction", "seed"), [("forward", 1), ("reverse", 2)])
def test_kill_9_mid_drain_then_rerun_then_every_job_runs_exactly_once(
        cutover_redis_url: str, cutover_database_url: str, direction: str, seed: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rq_url, pg_url = cutover_redis_url, cutover_database_url
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    src_url, tgt_url = (rq_url, pg_url) if direction == "forward" else (pg_url, rq_url)
    source, target = adapters.open_backend(src_url), adapters.open_backend(tgt_url)
    records: list[JobRecord] = [tally.registry.make_record(tally.tally, (n,))
                                for n in range(JOBS)]
    source.enqueue(records)
    rng = random.Random(seed)

    seen = [kill_while_moving(src_url, tgt_url, target, JOBS, rng) for _ in range(5)]
    assert_one_place(records, source, target, settled=False)
    assert seen == sorted(seen), "a later run moved jobs back"

    final = run_cli(src_url, tgt_url, "drain", "--yes", "--batch-size", "50", app=tally.APP)
    assert final.returncode == 0, final.stdout + final.stderr
    assert_one_place(records, source, target, settled=True)
    assert not list(source.snapshot(states=[JobState.HELD])), "nothing may stay held"
    verified = run_cli(src_url, tgt_url, "verify", "--report", os.devnull, app=tally.APP)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # Now the target's own workers run what moved; the task counts its executions in Redis.
    counter = redis.Redis.from_url(rq_url)
    monkeypatch.setenv(tally.URL_ENV, rq_url)
    if direction == "forward":  # Procrastinate side: the toolkit's worker, in its own process
        ran = run_cli(src_url, tgt_url, "worker", "--backend", "target", "--burst",
                      "--concurrency", "2", "--poll-interval", "0.05", app=tally.APP,
                      env={tally.URL_ENV: rq_url}, timeout=300)
        assert ran.returncode == 0, ran.stdout + ran.stderr
    else:  # RQ side: RQ's own worker, which knows nothing of the toolkit
        queue = rq.Queue("default", connection=counter)
        rq.SimpleWorker([queue], connection=counter).work(burst=True)
    executions = tally.counts(counter)
    assert len(executions) == JOBS, f"{JOBS - len(executions)} job(s) never ran"
    twice = {n: c for n, c in executions.items() if c != 1}
    assert not twice, f"jobs that ran more than once: {twice}"
    assert sorted(executions) == list(range(JOBS))
    counter.delete(tally.KEY)
    counter.close()
    source.close()
    target.close()


def test_a_job_put_then_run_and_forgotten_by_the_target_is_not_put_again(
        cutover_redis_url: str, cutover_database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after a put and before the release, the drain's re-run must only release: the
    target's workers may have run those jobs and the target forgotten them (RQ deletes a
    finished job after its result TTL), so putting them again would run them twice."""
    rq_url, pg_url = cutover_redis_url, cutover_database_url
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    source, target = adapters.open_backend(pg_url), adapters.open_backend(rq_url)
    records = [tally.registry.make_record(tally.tally, (n,)) for n in range(8)]
    source.enqueue(records)
    killed = run_cli(pg_url, rq_url, "drain", "--yes", "--batch-size", "4", app=tally.APP,
                     env={"CUTOVER_FAULT": "after_put:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    put = [r.id for r in records if target.get(r.id) is not None]
    assert 0 < len(put) < len(records), put

    counter = redis.Redis.from_url(rq_url)
    monkeypatch.setenv(tally.URL_ENV, rq_url)
    worker_queue = rq.Queue("default", connection=counter)
    rq.SimpleWorker([worker_queue], connection=counter).work(burst=True)
    assert sum(tally.counts(counter).values()) == len(put)
    assert target.remove(put) == len(put)  # the target forgets the jobs it ran

    again = run_cli(pg_url, rq_url, "drain", "--yes", app=tally.APP)
    assert again.returncode == 0, again.stdout + again.stderr
    rq.SimpleWorker([worker_queue], connection=counter).work(burst=True)
    executions = tally.counts(counter)
    assert executions == {n: 1 for n in range(8)}, executions
    counter.delete(tally.KEY)
    counter.close()
    source.close()
    target.close()
