"""Tasks for the fence's proof tests (importable: ``--app tests.integration.fence_tasks:registry``).
Each execution writes a row in ``fence_runs`` of the database named by ``FENCE_RUNS_URL``: the
tests count executions there, not in logs."""

from __future__ import annotations

import os
import time

import psycopg

from cutover.registry import TaskRegistry

registry = TaskRegistry()

SCHEMA = "CREATE TABLE IF NOT EXISTS fence_runs (key text NOT NULL, what text NOT NULL, " \
         "pid integer NOT NULL, at timestamptz NOT NULL DEFAULT now())"


def _write(key: str, what: str) -> None:
    with psycopg.connect(os.environ["FENCE_RUNS_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO fence_runs (key, what, pid) VALUES (%s, %s, %s)",
                     (key, what, os.getpid()))


@registry.task(name="fence.count")
def count(key: str) -> str:
    """One execution, counted."""
    _write(key, "done")
    return key


@registry.task(name="fence.slow_first")
def slow_first(key: str, seconds: float) -> str:
    """The first execution of ``key`` sleeps ``seconds`` (long enough to be killed in); later
    ones do not. Started and finished executions are counted apart."""
    with psycopg.connect(os.environ["FENCE_RUNS_URL"], autocommit=True) as conn:
        started = conn.execute("SELECT count(*) FROM fence_runs WHERE key = %s AND what = "
                               "'started'", (key,)).fetchone()
        conn.execute("INSERT INTO fence_runs (key, what, pid) VALUES (%s, 'started', %s)",
                     (key, os.getpid()))
    if started is not None and started[0] == 0:
        time.sleep(seconds)
    _write(key, "done")
    return key


def _runs_before(key: str) -> int:
    """Count this execution of ``key`` ('run', written at its start) and say how many came
    before it."""
    with psycopg.connect(os.environ["FENCE_RUNS_URL"], autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM fence_runs WHERE key = %s AND what = 'run'",
                           (key,)).fetchone()
        conn.execute("INSERT INTO fence_runs (key, what, pid) VALUES (%s, 'run', %s)",
                     (key, os.getpid()))
    return int(row[0]) if row else 0


def _fails(key: str, before: int) -> None:
    _write(key, "failed")  # its time: the retry's backoff counts from here at the earliest
    raise RuntimeError(f"{key}: planned failure of execution {before + 1}")


@registry.task(name="fence.flaky", max_attempts=3, backoff=0.5)
def flaky(key: str, failures: int) -> str:
    """Fails its first ``failures`` executions of ``key``, then succeeds; 3 attempts, retried
    after 0.5 s then 1 s. Every execution counted ('run'; 'failed' or 'done' at its end)."""
    before = _runs_before(key)
    if before < failures:
        _fails(key, before)
    _write(key, "done")
    return key


@registry.task(name="fence.fails_once")
def fails_once(key: str) -> str:
    """Fails its first execution of ``key`` (one attempt: failed for good), succeeds after."""
    before = _runs_before(key)
    if before == 0:
        _fails(key, before)
    _write(key, "done")
    return key
