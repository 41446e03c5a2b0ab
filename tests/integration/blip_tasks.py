"""Tasks for the control-plane blip tests (``--app tests.integration.blip_tasks:registry``).

Each execution writes a row in ``blip_runs`` of the database named by ``BLIP_RUNS_URL`` (the
tests count executions there, from the task's side). ``blip.count(key, kill=True)`` then, at the
very end of the job (just before its worker finishes the fence claim), terminates every session
of the database named by ``BLIP_KILL_DB`` (the control plane's) except those whose
application_name is ``blip_test`` (the test's own): a connection lost at the end of a job."""

from __future__ import annotations

import os
import time

import psycopg

from cutover.registry import TaskRegistry

registry = TaskRegistry()

SCHEMA = ("CREATE TABLE IF NOT EXISTS blip_runs (key text NOT NULL, pid integer NOT NULL, "
          "at timestamptz NOT NULL DEFAULT now())")
KILL = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
        "AND pid <> pg_backend_pid() AND application_name <> 'blip_test' "
        "AND backend_type = 'client backend'")


@registry.task(name="blip.count", max_attempts=1)
def count(key: str, kill: bool = False, pause: float = 0.0) -> str:
    """One execution, counted (after ``pause`` seconds); with ``kill``, the control plane's
    sessions cut as it ends."""
    time.sleep(pause)
    with psycopg.connect(os.environ["BLIP_RUNS_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO blip_runs (key, pid) VALUES (%s, %s)", (key, os.getpid()))
        if kill:
            conn.execute(KILL, (os.environ["BLIP_KILL_DB"],))
    return key
