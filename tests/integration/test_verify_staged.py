"""`verify` over a staged cut-over: the jobs the Router accepted are judged too, on execution
evidence (the fence's claims, the backends' own records), in the phase the cut-over is in.

RQ on Redis is the source, Procrastinate on PostgreSQL the target and the control plane's home
(tests/integration/conftest.py ``pairing``). Every test removes, runs or alters jobs behind the
toolkit's back and checks that verify names exactly those ids (exit 1 through the CLI where it
says so), and that the normal staged walk, with both fleets running, verifies CLEAN. Executions
are counted from the tasks' side (``fence_runs``, ``tasks.calls``)."""

from __future__ import annotations

import os
from typing import Any

import procrastinate
import psycopg
import pytest
import redis
import rq

from cutover import Router
from cutover.control import ControlPlane
from cutover.fence import PhaseGate
from cutover.phases import Phase, Side
from cutover.registry import TaskRegistry
from cutover.testing import tasks
from cutover.testing.contract import run_burst
from cutover.verify import verify
from cutover.verify_report import VerifyReport
from cutover.worker import Worker
from tests.integration import fence_tasks
from tests.integration.drain_helpers import invoke, invoke_json
from tests.integration.plain_workers import run_plain_rq_worker
from tests.integration.test_fence import Pairing, run_all
from tests.integration.test_verify import drained, expire_like_rq, pair

pytestmark = [pytest.mark.rq, pytest.mark.pg]

def router(pairing: Pairing, registry: TaskRegistry = fence_tasks.registry) -> Router:
    return Router(registry, source=pairing.source_url, target=pairing.target_url,
                  refresh=0.2, heartbeat=0.2)


def enqueue(pairing: Pairing, keys: list[str]) -> list[str]:
    """One fence.count job per key, through a Router in the current phase."""
    with router(pairing) as r:
        return [r.enqueue("fence.count", key) for key in keys]


def check(pairing: Pairing) -> VerifyReport:
    return verify(pairing.source, pairing.source_url, pairing.target, pairing.target_url,
                  pairing.control)


def cli_verify(pairing: Pairing) -> tuple[int, dict[str, Any]]:
    return invoke_json(pairing.source_url, pairing.target_url, "verify", "--report",
                       os.devnull)


def named(report: VerifyReport | dict[str, Any], name: str) -> list[str]:
    items = report[name] if isinstance(report, dict) else getattr(report, name)
    return sorted(str(i["id"]) for i in items)


def failing(report: VerifyReport) -> dict[str, list[str]]:
    """The failing lists that name anything."""
    return {name: named(report, name) for name in ("lost", "duplicated", "mismatched",
                                                    "unaccounted") if named(report, name)}


def worker(pairing: Pairing, side: Side, registry: TaskRegistry) -> Worker:
    """A fenced burst worker running ``registry`` (Pairing.worker runs the fence tasks only)."""
    backend = pairing.source if side is Side.SOURCE else pairing.target
    gate = PhaseGate(ControlPlane(pairing.target_url), backend, side,
                     source=pairing.source if side is Side.TARGET else None, refresh=0.2)
    pairing.gates.append(gate)
    return Worker(backend, registry, concurrency=2, burst=True, isolation="thread",
                  poll_interval=0.05, gate=gate)


def pg_delete(pairing: Pairing, ids: list[str], how: str = "DELETE") -> None:
    with psycopg.connect(pairing.target_url, autocommit=True) as conn:
        if how == "TRUNCATE":
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")
            return
        conn.execute("DELETE FROM procrastinate_jobs j USING cutover_jobs c "
                     "WHERE c.job_id = j.id AND c.cutover_id = ANY(%s)", (ids,))


def flush_source(pairing: Pairing) -> None:
    """Redis crashes and comes back from an older snapshot: every job and every record of one
    is gone (RQ's keys, cutover:ended); the store's identity and cut-over marker, written once
    long before, survive (as does the test session's claim on the database)."""
    conn = redis.Redis.from_url(pairing.source_url)
    keys = [k for k in conn.scan_iter(count=1000)
            if k.startswith(b"rq:") or k == b"cutover:ended"]
    if keys:
        conn.delete(*keys)


# -- jobs deleted behind the toolkit's back ------------------------------------------------------
@pytest.mark.parametrize("how", ["DELETE", "TRUNCATE"])
def test_waiting_rampdown_jobs_deleted_on_the_target_are_lost(pairing: Pairing,
                                                              how: str) -> None:
    pairing.set_phase(Phase.RAMPDOWN)
    ids = enqueue(pairing, [f"r{i}" for i in range(6)])
    clean = check(pairing)
    assert clean.clean and clean.jobs == {"waiting": 6}, clean.summary()
    gone = ids[:2] if how == "DELETE" else ids
    pg_delete(pairing, gone, how)
    code, report = cli_verify(pairing)
    assert code == 1 and named(report, "lost") == sorted(gone), report
    assert named(report, "duplicated") == named(report, "unaccounted") == []
    # `cutover complete` (its verify_clean check) refuses.
    refused = invoke(pairing.source_url, pairing.target_url, "complete", "--yes")
    assert refused.exit_code != 0, refused.output
    assert "verify_clean" in refused.output and "NOT CLEAN" in refused.output
    assert pairing.control.read_phase().phase is Phase.RAMPDOWN


def test_a_redis_crash_in_shadow_loses_the_jobs_whose_target_copy_was_dry_run(
        pairing: Pairing) -> None:
    pairing.set_phase(Phase.SHADOW)
    lost = enqueue(pairing, [f"lost{i}" for i in range(5)])
    flush_source(pairing)
    enqueue(pairing, [f"kept{i}" for i in range(5)])
    run_all(pairing.worker(Side.SOURCE), pairing.worker(Side.TARGET))
    assert pairing.runs() == {f"kept{i}": 1 for i in range(5)}  # the lost ones never ran
    report = check(pairing)
    assert failing(report) == {"lost": sorted(lost)}, report.summary()
    assert report.jobs == {"ran": 5}


def test_a_redis_crash_in_live_is_reported_though_the_target_ran_the_jobs(
        pairing: Pairing) -> None:
    pairing.set_phase(Phase.LIVE)
    vanished = enqueue(pairing, [f"v{i}" for i in range(4)])
    flush_source(pairing)
    enqueue(pairing, [f"f{i}" for i in range(4)])
    run_all(pairing.worker(Side.SOURCE), pairing.worker(Side.TARGET))
    runs = pairing.runs()
    assert sorted(runs) == sorted([f"v{i}" for i in range(4)] + [f"f{i}" for i in range(4)])
    assert set(runs.values()) == {1}
    report = check(pairing)
    # Each ran once, on the target; but their source copies left Redis with no record of how
    # (they could as well have run there unfenced): named, never assumed fine.
    assert failing(report) == {"unaccounted": sorted(vanished)}, report.summary()
    assert "gone from the source" in report.unaccounted[0]["reason"]
    assert report.jobs == {"ran": 4}


def test_target_copies_deleted_in_live_are_reported_and_so_is_a_source_only_wait_in_complete(
        pairing: Pairing) -> None:
    pairing.set_phase(Phase.LIVE)
    ids = enqueue(pairing, [f"d{i}" for i in range(4)])
    pg_delete(pairing, ids[:2])
    report = check(pairing)
    # The source copies still wait, and a source worker runs them in live: only the deletion
    # is reported (procrastinate's record: deleted while todo).
    assert failing(report) == {"unaccounted": sorted(ids[:2])}, report.summary()
    assert "deleted from the target while todo" in report.unaccounted[0]["reason"]
    assert report.jobs == {"waiting": 2}
    pairing.set_phase(Phase.COMPLETE)
    report = check(pairing)
    # In complete no worker runs the source: a job waiting only there is lost.
    assert failing(report) == {"lost": sorted(ids[:2])}, report.summary()
    assert "where no worker runs jobs in complete" in report.lost[0]["reason"]


# -- run twice by a native worker, its records since expired -------------------------------------
def test_a_job_run_twice_by_a_native_rq_worker_is_named_before_and_after_rq_expired_it(
        pairing: Pairing) -> None:
    tasks.reset()
    pairing.set_phase(Phase.LIVE)
    with router(pairing, tasks.registry) as r:
        ids = [r.enqueue(tasks.add, i, 1) for i in range(3)]
    run_all(worker(pairing, Side.TARGET, tasks.registry))  # fenced: the target copies run
    run_plain_rq_worker(pairing.source_url)  # no fence: the source copies run as well
    assert len(tasks.calls) == 6  # counted by the task itself: each ran twice
    report = check(pairing)
    assert failing(report) == {"duplicated": sorted(ids)}, report.summary()
    assert "ran twice" in report.duplicated[0]["reason"]
    conn = redis.Redis.from_url(pairing.source_url)
    for job_id in ids:  # RQ's result TTL and registry cleanup: nothing of the run is left
        expire_like_rq(conn, tasks.registry.make_record(tasks.add, (0, 0)).replace(id=job_id))
    report = check(pairing)
    assert failing(report) == {"unaccounted": sorted(ids)}, report.summary()


# -- altered, or ended by hand: drained jobs (no staged cut-over) --------------------------------
@pytest.mark.parametrize("direction", ["rq->pg", "pg->rq"])
def test_args_altered_on_a_moved_job_that_then_ran_are_mismatched(urls: tuple[str, str],
                                                                   direction: str) -> None:
    source, target_url = pair(urls, direction)
    records = [tasks.registry.make_record(tasks.add, (i, 7)) for i in range(3)]
    target = drained(source, target_url, records)
    altered = records[1]
    target.remove([altered.id])  # written again with other args, as a buggy tool could
    target.put([altered.replace(kwargs={**altered.kwargs, "a": 100})])
    run_burst(target)
    assert sorted(c[1]["a"] for c in tasks.calls) == [0, 2, 100]  # it ran, altered
    code, report = invoke_json(source, target_url, "verify", "--report", os.devnull)
    assert code == 1 and named(report, "mismatched") == [altered.id], report
    fields = report["mismatched"][0]["fields"]
    assert list(fields) == ["kwargs"], fields
    assert fields["kwargs"]["ledger"]["a"] == 1 and fields["kwargs"]["target"]["a"] == 100
    assert named(report, "lost") == named(report, "duplicated") == [], report["lost"]


def end_by_hand(target_url: str, job_id: str, how: str) -> None:
    """Mark a waiting job as ended without running it, with each backend's own tools."""
    if not target_url.startswith(("postgresql:", "postgres:")):  # redis:// or unix:// (RQ)
        conn = redis.Redis.from_url(target_url)
        job = rq.job.Job.fetch(job_id, connection=conn)
        if how == "cancelled":
            job.cancel()
        else:
            job.set_status(rq.job.JobStatus.FINISHED)
        return
    with psycopg.connect(target_url, autocommit=True) as conn:
        row = conn.execute("SELECT job_id FROM cutover_jobs WHERE cutover_id = %s",
                           (job_id,)).fetchone()
        assert row is not None
        if how == "succeeded":
            conn.execute("UPDATE procrastinate_jobs SET status = 'succeeded' WHERE id = %s",
                         (row[0],))
            return
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=target_url))
    with app.open():
        assert app.job_manager.cancel_job_by_id(row[0])


@pytest.mark.parametrize("how", ["succeeded", "cancelled"])
@pytest.mark.parametrize("direction", ["rq->pg", "pg->rq"])
def test_a_moved_job_ended_by_hand_without_running_is_lost(urls: tuple[str, str],
                                                            direction: str, how: str) -> None:
    source, target_url = pair(urls, direction)
    records = [tasks.registry.make_record(tasks.add, (i, 8)) for i in range(3)]
    drained(source, target_url, records)
    end_by_hand(target_url, records[0].id, how)
    code, report = invoke_json(source, target_url, "verify", "--report", os.devnull)
    assert code == 1 and named(report, "lost") == [records[0].id], report
    assert "no evidence it ran" in report["lost"][0]["reason"]
    assert tasks.calls == []


# -- the normal walk: no false alarm -------------------------------------------------------------
def test_a_staged_walk_with_both_fleets_running_verifies_clean_and_completes(
        pairing: Pairing) -> None:
    """shadow (dry runs remove the target copies), live (the fence removes each job's other
    copy), rampdown (target only), each phase's jobs run by both fleets at once: every job ran
    exactly once (counted by the task), verify is CLEAN, and `cutover complete` goes through."""
    keys: list[str] = []
    for phase in (Phase.SHADOW, Phase.LIVE, Phase.RAMPDOWN):
        pairing.set_phase(phase)
        batch = [f"{phase}-{i}" for i in range(8)]
        keys += batch
        enqueue(pairing, batch)
        if phase is Phase.LIVE:  # live's two copies, both waiting: not duplicates
            waiting = check(pairing)
            assert waiting.clean and waiting.jobs == {"ran": 8, "waiting": 8}, \
                waiting.summary()
        run_all(pairing.worker(Side.SOURCE), pairing.worker(Side.TARGET))
    assert pairing.runs() == dict.fromkeys(keys, 1)
    with psycopg.connect(pairing.target_url) as conn:
        removals = dict(conn.execute("SELECT why, count(*) FROM cutover.removals "
                                     "GROUP BY why").fetchall())
    assert removals == {"dry_run": 8, "duplicate": 8}
    report = check(pairing)
    assert report.clean and report.jobs == {"ran": 24}, report.summary()
    # Retention at its harshest, on both sides: every finished job and every record of it
    # deleted (RQ's result TTL and registry cleanup, cutover:ended evicted; a delete-on-success
    # backend that keeps no departure record). The fence's claims and removals still account
    # for every copy.
    conn = redis.Redis.from_url(pairing.source_url)
    finished = list(pairing.source.snapshot())
    for record in finished:
        assert record.state.value == "finished"
        expire_like_rq(conn, record)
    conn.delete("cutover:ended")
    with psycopg.connect(pairing.target_url, autocommit=True) as pg:
        deleted = pg.execute("DELETE FROM procrastinate_jobs WHERE status = 'succeeded'"
                             ).rowcount
        pg.execute("TRUNCATE cutover_departed")
    assert len(finished) + deleted == 24  # one finished copy a job: the rest were removed
    assert sum(1 for _ in pairing.source.snapshot()) == sum(
        1 for _ in pairing.target.snapshot()) == 0
    report = check(pairing)
    assert report.clean and report.jobs == {"ran": 24}, report.summary()
    done = invoke(pairing.source_url, pairing.target_url, "complete", "--yes")
    assert done.exit_code == 0, done.output
    assert pairing.control.read_phase().phase is Phase.COMPLETE


def test_a_rollback_to_off_that_moved_jobs_back_verifies_clean_before_and_after_they_ran(
        pairing: Pairing) -> None:
    """Rows moved back (released, target -> source) and live's rows whose target copy the move
    back removed: waiting on the source, which runs in off; then run there once each."""
    from click.testing import CliRunner

    from cutover.cli.main import cli

    pairing.set_phase(Phase.LIVE)
    keys = [f"live{i}" for i in range(4)]
    enqueue(pairing, keys)
    pairing.set_phase(Phase.RAMPDOWN)
    keys += [f"ramp{i}" for i in range(4)]
    enqueue(pairing, keys[4:])
    result = CliRunner().invoke(cli, ["--source", pairing.source_url, "--target",
                                      pairing.target_url, "--app",
                                      "tests.integration.fence_tasks:registry", "rollback",
                                      "--yes", "--to", "off"])
    assert result.exit_code == 0, result.output
    report = check(pairing)
    assert report.clean and report.jobs == {"waiting": 8}, report.summary()
    run_all(pairing.worker(Side.SOURCE), pairing.worker(Side.TARGET))
    assert pairing.runs() == dict.fromkeys(keys, 1)
    report = check(pairing)
    assert report.clean and report.jobs == {"ran": 8}, report.summary()
