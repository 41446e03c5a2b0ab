"""A control plane in a database of its own, which a test can make unreachable (the server then
refuses every connection to it: ``ALLOW_CONNECTIONS false`` and its sessions terminated) and
reachable again."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


class ControlDatabase:
    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"cutover_ctl_{uuid.uuid4().hex[:8]}"
        self.url = urlunsplit(urlsplit(server_url)._replace(path=f"/{self.name}"))

    def _admin(self, statement: sql.Composable, *params: object) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(statement, params or None)

    def cut(self) -> None:
        """Refuse every connection to the control plane from now on, and end those there are."""
        self._admin(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
            sql.Identifier(self.name)))
        self._admin(sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s"), self.name)

    def restore(self) -> None:
        self._admin(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
            sql.Identifier(self.name)))


@contextlib.contextmanager
def control_database(server_url: str) -> Iterator[ControlDatabase]:
    """A fresh database on the server of ``server_url`` (dropped afterwards)."""
    db = ControlDatabase(server_url)
    db._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db.name)))
    try:
        yield db
    finally:
        db._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(db.name)))
