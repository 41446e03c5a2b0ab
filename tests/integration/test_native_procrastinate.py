"""The way out: procrastinate's own worker on make_app runs moved jobs exactly as they were.

The proof drains an RQ backlog with every argument kind to PostgreSQL with the real `cutover`
command, then runs it under the real `procrastinate --app ... worker` command (another
process), under `app.run_worker()`, and under the cutover worker: each task records what it
received, and all three must see exactly the producer's values and types, and retry as the job's
own budget says.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import procrastinate
import psycopg
import pytest
import redis
import rq
from cutover_procrastinate import ProcrastinateBackend, make_app
from cutover_procrastinate.native import JobBudget

from cutover import codec
from cutover.record import JobRecord, JobState
from cutover.worker import Worker
from tests.integration import native_tasks
from tests.integration.native_tasks import registry

pytestmark = [pytest.mark.rq, pytest.mark.pg]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.native_tasks"

AWARE = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)
OFFSET = dt.datetime(2026, 3, 4, 7, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=2)))
EVERY_KIND: tuple[Any, ...] = (
    decimal.Decimal("12.3400"), AWARE, dt.datetime(2026, 3, 4, 5, 6, 7), dt.date(2026, 3, 4),
    dt.time(13, 14, 15, 16), dt.timedelta(days=1, seconds=2, microseconds=3),
    uuid.UUID("12345678-1234-5678-1234-567812345678"), b"\x00\xffbytes", (1, "two", (3,)),
    {"a", "b"}, frozenset({1, 2}),
)
NESTED = {"list": [1, 2.5, None, True, "x"], "map": {"k": (3, 4), "d": decimal.Decimal("0.1")},
          "offset": OFFSET}


def strict(call: tuple[str, tuple[Any, ...], dict[str, Any]]) -> str:
    """A call's canonical text: equal only when values AND types are equal (a tuple is not a
    list, a Decimal not a float, a tagged dict not the value it tags, naive not aware)."""
    return codec.canonical(call)


def backlog(rq_url: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Jobs of every argument kind on RQ (pickle, as RQ writes them); returns the calls the
    tasks must receive, in any order."""
    queue = rq.Queue("native", connection=redis.Redis.from_url(rq_url))
    default = rq.Queue("default", connection=redis.Redis.from_url(rq_url))
    queue.enqueue_call(native_tasks.kinds, args=("every-kind", *EVERY_KIND),
                       kwargs={"nested": NESTED, "at": AWARE})
    queue.enqueue_call(native_tasks.kinds, args=("plain", 1, [2, "three"]),
                       kwargs={"x": {"y": [1, 2]}, "z": None})
    default.enqueue_call(native_tasks.charge, args=(decimal.Decimal("9.99"), OFFSET),
                         kwargs={"ref": uuid.UUID(int=7)})
    default.enqueue_call(native_tasks.refuse, kwargs={"key": "fast"},
                         retry=rq.Retry(max=2, interval=[0, 0]))
    default.enqueue_call(native_tasks.refuse, kwargs={"key": "slow"},
                         retry=rq.Retry(max=3, interval=3600))
    queue.enqueue_call(native_tasks.gather, kwargs={"d": decimal.Decimal("-0"), "s": {b"x"},
                                                    "t": (None,), "day": dt.date(2026, 1, 1)})
    return [
        ("kinds", ("every-kind", *EVERY_KIND), {"nested": NESTED, "at": AWARE}),
        ("kinds", ("plain", 1, [2, "three"]), {"x": {"y": [1, 2]}, "z": None}),
        ("charge", (), {"amount": decimal.Decimal("9.99"), "when": OFFSET,
                        "ref": uuid.UUID(int=7)}),
        *[("refuse", (), {"key": "fast"})] * 3,  # Retry(max=2): three runs in all
        ("refuse", (), {"key": "slow"}),  # then waits an hour for its retry
        ("gather", (), {"d": decimal.Decimal("-0"), "s": {b"x"}, "t": (None,),
                        "day": dt.date(2026, 1, 1)}),
    ]


def cutover_cli(rq_url: str, pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cutover", "--app", f"{APP}:registry",
                           "--source", rq_url, "--target", pg_url, *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def due(pg_url: str) -> int:
    """Jobs procrastinate would start now."""
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' "
                           "AND (scheduled_at IS NULL OR scheduled_at <= now())").fetchone()
    assert row is not None
    return int(row[0])


def run_procrastinate_cli(pg_url: str, record: Path, *options: str) -> None:
    """The real `procrastinate --app ... worker --one-shot`, until nothing is due (a one-shot
    worker leaves a job it retried during its last fetch for the next one)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUTOVER_NATIVE_DATABASE_URL": pg_url,
           "CUTOVER_NATIVE_RECORD": str(record)}
    for _ in range(8):
        done = subprocess.run([str(Path(sys.executable).parent / "procrastinate"), "--app",
                               f"{APP}.app", "worker", "--one-shot", *options], cwd=ROOT,
                              env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        if not due(pg_url):
            return
    raise AssertionError("jobs still due after 8 one-shot workers")


def run_app_worker(app: procrastinate.App, pg_url: str) -> None:
    for _ in range(8):
        app.run_worker(wait=False, install_signal_handlers=False, listen_notify=False)
        if not due(pg_url):
            return
    raise AssertionError("jobs still due after 8 one-shot workers")


def run_cutover_worker(pg_url: str) -> None:
    """`cutover worker --backend procrastinate --burst`, in this process."""
    backend = ProcrastinateBackend(pg_url)
    try:
        Worker(backend, registry, burst=True, poll_interval=0.05).run(
            install_signal_handlers=False)
    finally:
        backend.close()


def outcomes(pg_url: str) -> dict[str, tuple[JobState, int]]:
    """Final state and attempts by (task, first argument) of every job on PostgreSQL."""
    backend = ProcrastinateBackend(pg_url)
    try:
        out = {}
        for r in backend.snapshot():
            key = r.kwargs.get("key") or (r.args[0] if r.args else r.task.rsplit(".", 1)[-1])
            out[str(key)] = (r.state, r.attempts)
        return out
    finally:
        backend.close()


EXPECTED_OUTCOMES = {
    "every-kind": (JobState.FINISHED, 1), "plain": (JobState.FINISHED, 1),
    "charge": (JobState.FINISHED, 1), "fast": (JobState.FAILED, 3),
    "slow": (JobState.SCHEDULED, 1), "gather": (JobState.FINISHED, 1),
}


@pytest.mark.parametrize("runner", ["procrastinate-cli", "procrastinate-cli-c4", "run_worker",
                                    "cutover-worker"])
def test_moved_backlog_runs_with_the_producers_values_on_every_worker(
        runner: str, cutover_redis_url: str, cutover_database_url: str, tmp_path: Path) -> None:
    native_tasks.reset()
    expected = backlog(cutover_redis_url)
    assert cutover_cli(cutover_redis_url, cutover_database_url, "init", "--yes").returncode == 0
    drained = cutover_cli(cutover_redis_url, cutover_database_url, "drain", "--yes")
    assert drained.returncode == 0, drained.stderr[-3000:]

    record = tmp_path / "calls.pickle"
    if runner.startswith("procrastinate-cli"):
        options = ("--concurrency", "4") if runner.endswith("c4") else ()
        run_procrastinate_cli(cutover_database_url, record, *options)
        calls = native_tasks.recorded(str(record))
    elif runner == "run_worker":
        run_app_worker(make_app(registry, cutover_database_url), cutover_database_url)
        calls = list(native_tasks.calls)
    else:
        run_cutover_worker(cutover_database_url)
        calls = list(native_tasks.calls)

    assert sorted(map(strict, calls)) == sorted(map(strict, expected))
    every = next(c for c in calls if c[1] and c[1][0] == "every-kind")
    assert [type(v) for v in every[1][1:]] == [type(v) for v in EVERY_KIND]
    assert outcomes(cutover_database_url) == EXPECTED_OUTCOMES


def test_the_slow_retry_waits_its_own_interval(cutover_database_url: str) -> None:
    """Retry(max=3, interval=3600) moved over: after the first failure the job waits an hour
    (not procrastinate's default of no wait, not the registry's backoff)."""
    backend = ProcrastinateBackend(cutover_database_url)
    try:
        backend.put([JobRecord(id="slow-1", task=f"{APP}.refuse", kwargs={"key": "s"},
                               max_attempts=4, retry_intervals=(3600.0,))])
        before = dt.datetime.now(dt.UTC)
        run_app_worker(make_app(registry, cutover_database_url), cutover_database_url)
        job = backend.get("slow-1")
        assert job is not None and job.state is JobState.SCHEDULED and job.attempts == 1
        assert job.run_at is not None
        waited = (job.run_at - before).total_seconds()
        assert 3598 <= waited <= 3605
        assert job.error and job.error.splitlines()[-1] == "RuntimeError: refused s"
    finally:
        backend.close()


def test_a_job_that_used_part_of_its_budget_gets_only_the_rest(
        cutover_database_url: str) -> None:
    native_tasks.reset()
    backend = ProcrastinateBackend(cutover_database_url)
    try:
        backend.put([JobRecord(id="half", task=f"{APP}.refuse", kwargs={"key": "half"},
                               attempts=2, max_attempts=3, retry_intervals=(0.0,))])
        run_app_worker(make_app(registry, cutover_database_url), cutover_database_url)
        job = backend.get("half")
        assert job is not None and (job.state, job.attempts) == (JobState.FAILED, 3)
        assert [c[0] for c in native_tasks.calls] == ["refuse"]
    finally:
        backend.close()


@pytest.mark.parametrize("runner", ["run_worker", "cutover-worker"])
def test_jobs_deferred_by_plain_procrastinate_code_run_as_they_are(
        runner: str, cutover_database_url: str) -> None:
    """No cutover_jobs row: plain JSON args reach the task unchanged, one attempt (even for a
    task whose registry budget is larger: only the Router records a budget with the job), under
    procrastinate's worker on make_app and under the cutover worker alike; rich values deferred
    through make_app's own tasks arrive as themselves."""
    native_tasks.reset()
    app = make_app(registry, cutover_database_url)
    with app.open():
        app.configure_task(f"{APP}.charge").defer(amount="1.50", when=None)
        app.tasks[f"{APP}.refuse"].defer(key="plain")
        app.tasks[f"{APP}.budgeted"].defer(key="plain")
        app.tasks[f"{APP}.kinds"].defer(first=decimal.Decimal("2.5"), when=AWARE)
    if runner == "run_worker":
        run_app_worker(app, cutover_database_url)
    else:
        run_cutover_worker(cutover_database_url)
    assert sorted(map(strict, native_tasks.calls)) == sorted(map(strict, [
        ("charge", (), {"amount": "1.50", "when": None, "ref": None}),
        ("refuse", (), {"key": "plain"}),
        ("budgeted", (), {"key": "plain"}),
        ("kinds", (decimal.Decimal("2.5"),), {"when": AWARE}),
    ]))
    with psycopg.connect(cutover_database_url) as conn:
        rows = dict(conn.execute("SELECT task_name, attempts FROM procrastinate_jobs "
                                 "WHERE status = 'failed'").fetchall())
    assert rows == {f"{APP}.refuse": 1, f"{APP}.budgeted": 1}
    backend = ProcrastinateBackend(cutover_database_url)
    try:  # the error is kept where the toolkit reads it, by either worker
        errors = {r.task: (r.error or "").splitlines()[-1:] for r in backend.snapshot()
                  if r.state is JobState.FAILED}
    finally:
        backend.close()
    assert errors == {f"{APP}.refuse": ["RuntimeError: refused plain"],
                      f"{APP}.budgeted": ["RuntimeError: budgeted plain"]}


def test_every_task_is_registered_under_its_cutover_name_queue_and_aliases() -> None:
    app = make_app(registry, "postgresql://unset.invalid/unset")
    for task in registry:
        native = app.tasks[task.name]
        assert native.queue == task.queue and native.pass_context
        assert isinstance(native.retry_strategy, JobBudget)
        for alias in task.aliases:
            assert app.tasks[alias] is native
    assert f"{APP}.old_refuse" in app.tasks


def test_audit_names_what_a_plain_procrastinate_app_would_misread(
        cutover_redis_url: str, cutover_database_url: str) -> None:
    """Per task, with counts; plain JSON jobs are not named; the drain writes them as plain
    procrastinate's own defer would, so a plain App reads them unchanged."""
    backlog(cutover_redis_url)
    rq.Queue("default", connection=redis.Redis.from_url(cutover_redis_url)).enqueue(
        native_tasks.charge, "1.50", None)
    audited = cutover_cli(cutover_redis_url, cutover_database_url, "--json", "audit")
    assert audited.returncode == 0, audited.stderr[-2000:]
    misreads = json.loads(audited.stdout)["plain_procrastinate_misreads"]
    assert misreads == {
        f"{APP}.charge": {"'amount' arrives as a tagged dict (decimal), not the value": 1,
                          "'when' arrives as a tagged dict (datetime), not the value": 1,
                          "'ref' arrives as a tagged dict (uuid), not the value": 1},
        f"{APP}.gather": {"'d' arrives as a tagged dict (decimal), not the value": 1,
                          "'s' arrives as a tagged dict (set), not the value": 1,
                          "'t' arrives as a tagged dict (tuple), not the value": 1,
                          "'day' arrives as a tagged dict (date), not the value": 1},
        f"{APP}.kinds": {"positional *args are dropped": 2,
                         "'nested' arrives as a tagged dict (tuple), not the value": 1,
                         "'at' arrives as a tagged dict (datetime), not the value": 1},
        f"{APP}.refuse": {"its retry budget (3 attempts) is ignored": 1,
                          "its retry budget (4 attempts) is ignored": 1},
    }
    text = cutover_cli(cutover_redis_url, cutover_database_url, "audit")
    assert "a plain procrastinate App would misread" in text.stdout
    elsewhere = cutover_cli(cutover_redis_url, "memory://", "--json", "audit")
    assert "plain_procrastinate_misreads" not in json.loads(elsewhere.stdout)

    assert cutover_cli(cutover_redis_url, cutover_database_url, "init", "--yes").returncode == 0
    assert cutover_cli(cutover_redis_url, cutover_database_url, "drain", "--yes").returncode == 0
    with psycopg.connect(cutover_database_url) as conn:
        plain = conn.execute("SELECT args FROM procrastinate_jobs WHERE task_name = %s AND "
                             "args->>'amount' = '1.50'", (f"{APP}.charge",)).fetchone()
    assert plain is not None and plain[0] == {"amount": "1.50", "when": None}


def test_the_webhook_example_runs_under_procrastinates_own_cli(cutover_database_url: str) -> None:
    """examples/webhooks/pg.py: a Router job with a Decimal and an aware datetime, and a job
    deferred by plain procrastinate code through the example app, run by the real CLI."""
    from cutover import Router
    from examples.webhooks.app import process_event
    from examples.webhooks.app import registry as webhooks

    with Router(webhooks, source=cutover_database_url) as router:
        routed = router.enqueue(process_event, "evt_1", "charge.refunded",
                                decimal.Decimal("12.50"), AWARE)
    app = make_app(webhooks, cutover_database_url)  # as examples/webhooks/pg.py builds it
    with app.open():
        app.tasks["examples.webhooks.app.process_event"].defer(
            event_id="evt_2", kind="invoice.paid", amount=decimal.Decimal("9.90"),
            received_at=OFFSET)
    done = subprocess.run([str(Path(sys.executable).parent / "procrastinate"), "--app",
                           "examples.webhooks.pg.app", "worker", "--one-shot"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "DATABASE_URL": cutover_database_url},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    backend = ProcrastinateBackend(cutover_database_url)
    try:
        job = backend.get(routed)
        assert job is not None and job.state is JobState.FINISHED
        assert job.result == "2026-03-04 charge.refunded -12.50"
        assert job.max_attempts == 5
        states = {r.kwargs.get("event_id"): r.state for r in backend.snapshot()}
        assert states == {"evt_1": JobState.FINISHED, "evt_2": JobState.FINISHED}
    finally:
        backend.close()


def test_undecodable_args_fail_once_with_the_reason_never_reach_the_task(
        cutover_database_url: str) -> None:
    """The cutover worker leaves such a job in place; procrastinate's worker cannot, so the job
    fails at once (a retry cannot decode it either), its error says why, the task never runs."""
    native_tasks.reset()
    ProcrastinateBackend(cutover_database_url).close()  # the adapter's tables
    with psycopg.connect(cutover_database_url) as conn:
        row = conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args) VALUES ('default', "
            "%s, '{\"amount\": {\"$cutover\": \"nope\", \"v\": 1}, \"when\": null}') "
            "RETURNING id", (f"{APP}.charge",)).fetchone()
        assert row is not None
        conn.execute("INSERT INTO cutover_jobs (job_id, cutover_id, max_attempts) "
                     "VALUES (%s, 'bad-1', 3)", (row[0],))
    run_app_worker(make_app(registry, cutover_database_url), cutover_database_url)
    assert native_tasks.calls == []
    with psycopg.connect(cutover_database_url) as conn:
        status, attempts, error = conn.execute(
            "SELECT j.status::text, j.attempts, c.error FROM procrastinate_jobs j "
            "JOIN cutover_jobs c ON c.job_id = j.id").fetchone() or (None, None, None)
    assert (status, attempts) == ("failed", 1)
    assert "unknown codec tag 'nope'" in error


def test_a_success_after_a_failure_clears_the_error_as_the_cutover_worker_does(
        cutover_database_url: str) -> None:
    native_tasks.reset()
    backend = ProcrastinateBackend(cutover_database_url)
    try:
        backend.put([JobRecord(id="once", task=f"{APP}.once", kwargs={"key": "o"},
                               max_attempts=2),
                     JobRecord(id="ok", task=f"{APP}.once", kwargs={"key": "p"})])
        native_tasks._attempts["p"] = 1  # "p" succeeds at once: no outcome row write needed
        run_app_worker(make_app(registry, cutover_database_url), cutover_database_url)
        once, ok = backend.get("once"), backend.get("ok")
        assert once is not None and ok is not None
        assert (once.state, once.attempts, once.error) == (JobState.FINISHED, 2, None)
        assert (ok.state, ok.attempts, ok.error, ok.result) == (JobState.FINISHED, 1, None, None)
    finally:
        backend.close()


def test_a_database_the_toolkit_never_wrote_to_runs_as_plain_procrastinate(
        cutover_database_url: str) -> None:
    """No cutover_jobs table: jobs are plain procrastinate jobs (one attempt, args decoded),
    not failures of a missing table."""
    native_tasks.reset()
    with psycopg.connect(cutover_database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS cutover_jobs CASCADE")
    app = make_app(registry, cutover_database_url)
    with app.open():
        app.tasks[f"{APP}.charge"].defer(amount=decimal.Decimal("3.30"), when=AWARE)
        app.tasks[f"{APP}.refuse"].defer(key="no-table")
    run_app_worker(app, cutover_database_url)
    assert sorted(map(strict, native_tasks.calls)) == sorted(map(strict, [
        ("charge", (), {"amount": decimal.Decimal("3.30"), "when": AWARE, "ref": None}),
        ("refuse", (), {"key": "no-table"})]))
    with psycopg.connect(cutover_database_url) as conn:
        rows = sorted(conn.execute("SELECT task_name, status::text, attempts "
                                   "FROM procrastinate_jobs").fetchall())
    assert rows == [(f"{APP}.charge", "succeeded", 1), (f"{APP}.refuse", "failed", 1)]


def test_cutover_and_procrastinate_workers_side_by_side_run_each_job_once(
        cutover_database_url: str) -> None:
    """The switch-over: both fleets on the same jobs for a while, each job runs once."""
    import threading
    from collections import Counter

    native_tasks.reset()
    backend = ProcrastinateBackend(cutover_database_url)
    try:
        backend.enqueue([registry.make_record(native_tasks.kinds, (f"job-{i}", i), {})
                         for i in range(200)])
        cutover = Worker(backend, registry, burst=True, concurrency=2, poll_interval=0.05)
        thread = threading.Thread(target=cutover.run, kwargs={"install_signal_handlers": False})
        thread.start()
        run_app_worker(make_app(registry, cutover_database_url), cutover_database_url)
        thread.join(60)
        runs = Counter(c[1][0] for c in native_tasks.calls)
        assert len(runs) == 200 and set(runs.values()) == {1}
        assert {r.state for r in backend.snapshot()} == {JobState.FINISHED}
    finally:
        backend.close()
