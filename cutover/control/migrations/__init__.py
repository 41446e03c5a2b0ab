"""Numbered schema migrations of the control plane: ``NNNN_name.sql`` in this directory.

``cutover init`` applies the ones a schema lacks, in order, in one transaction under a
transaction-scoped advisory lock (several processes may run init at once; a transaction pooler
keeps the lock for the whole transaction), and records each in ``{schema}.migrations``.
``ControlPlane.require()`` compares the recorded version with :func:`latest`.

A schema made before migrations existed (tables but no ``migrations`` table) is version 0:
0001 is written idempotently so that applying it brings such a schema to the baseline shape
(stores, legacy keys, the runs' URL columns) and stamps it 1. Later files are plain DDL.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from cutover.errors import ConfigurationError

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
#: The key of the init lock (the one earlier versions took too, so they serialize with us).
LOCK = "SELECT pg_advisory_xact_lock(hashtext('cutover.control.init'))"


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str


@functools.cache
def all_migrations() -> tuple[Migration, ...]:
    """The migration files, in version order (read once)."""
    found: list[Migration] = []
    for entry in resources.files(__name__).iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"control migrations are not numbered 1..n: {versions}")
    return tuple(found)


def latest() -> int:
    """The version this code builds and expects."""
    return all_migrations()[-1].version


def current(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """The version recorded in ``schema``: None without a control schema, 0 for a schema of an
    unversioned earlier version (a ledger, no migrations table)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
                       (f'"{schema}".migrations', f'"{schema}".ledger')).fetchone()
    assert row is not None
    if row[0]:
        found = conn.execute(sql.SQL("SELECT COALESCE(max(version), 0) FROM {}.migrations")
                             .format(sql.Identifier(schema))).fetchone()
        return int(found[0]) if found else 0
    return 0 if row[1] else None


def apply(conn: psycopg.Connection[Any], compose: Callable[[str], sql.Composed],
          schema: str) -> bool:
    """Apply the migrations ``schema`` lacks, inside the caller's transaction. Returns True when
    there was no control schema before. Refuses a schema newer than this code."""
    conn.execute(LOCK)
    version = current(conn, schema)
    if version is not None and version > latest():
        raise ConfigurationError(
            f"the control schema {schema!r} is at version {version}, newer than this "
            f"queue-cutover knows ({latest()}): upgrade queue-cutover, do not downgrade the schema")
    conn.execute(compose("CREATE SCHEMA IF NOT EXISTS {schema};\n"
                         "CREATE TABLE IF NOT EXISTS {schema}.migrations (\n"
                         "    version integer PRIMARY KEY,\n"
                         "    name text NOT NULL,\n"
                         "    applied_at timestamptz NOT NULL DEFAULT now()\n"
                         ")"))
    for migration in all_migrations():
        if version is not None and migration.version <= version:
            continue
        conn.execute(compose(migration.text))
        conn.execute(compose("INSERT INTO {schema}.migrations (version, name) "
                             "VALUES (%(version)s, %(name)s)"),
                     {"version": migration.version, "name": migration.name})
    return version is None
