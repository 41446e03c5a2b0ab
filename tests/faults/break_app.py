"""Tasks for the break tests (tests/faults/test_break_*.py): each records its own execution in
the table ``brk_runs`` of the PostgreSQL database named by ``BRK_TALLY_URL``, outside the
toolkit, so the tests count runs from the tasks' side."""

from __future__ import annotations

import os
import time

import psycopg

from cutover.registry import TaskRegistry

registry = TaskRegistry()
APP = "tests.faults.break_app:registry"
FLAG_DIR_ENV = "BRK_FLAG_DIR"


def _record(tag: str) -> None:
    with psycopg.connect(os.environ["BRK_TALLY_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO brk_runs (tag) VALUES (%s)", (tag,))


def setup(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS brk_runs (tag text NOT NULL, "
                     "at timestamptz NOT NULL DEFAULT clock_timestamp())")


def runs(url: str, tag: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM brk_runs WHERE tag = %s", (tag,)).fetchone()
    return int(row[0]) if row else 0


@registry.task
def rec(tag: str) -> str:
    _record(tag)
    return tag


@registry.task
def slow(tag: str, seconds: float = 3.0) -> str:
    _record(tag + ":start")
    time.sleep(seconds)
    _record(tag)
    return tag


@registry.task(max_attempts=1)
def fails_unless_flag(tag: str) -> str:
    """Fails until the file ``$BRK_FLAG_DIR/<tag>`` exists."""
    _record(tag)
    if not os.path.exists(os.path.join(os.environ[FLAG_DIR_ENV], tag)):
        raise RuntimeError("flag missing " + tag)
    return tag


if os.environ.get("BRK_PG_APP"):  # `procrastinate --app tests.faults.break_app.app worker`
    from cutover_procrastinate import make_app

    app = make_app(registry, os.environ["CUTOVER_TARGET"])
