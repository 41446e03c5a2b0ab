"""The pytest plugin (entry point ``pytest11``): test servers and fixtures users can reuse.

Fixtures: ``cutover_database_url`` (a fresh PostgreSQL database), ``cutover_redis_url`` (a fresh
Redis database number) and ``cutover_backend`` (parametrised over every installed adapter).
A missing server skips the test locally and fails it in CI (``CI`` set).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.testing.servers import SERVERS, ServiceUnavailable

pytest.register_assert_rewrite("cutover.testing.contract")

#: How to get a URL for each adapter this plugin knows how to serve.
SERVED = ("memory", "rq", "procrastinate")


def _unavailable(exc: Exception) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"test server unavailable in CI: {exc}")
    pytest.skip(f"test server unavailable: {exc}")


@contextlib.contextmanager
def served_url(name: str) -> Iterator[str]:
    """The URL (``adapter+url``, password included) of an isolated, empty store of adapter
    ``name`` on the session's servers; a database is dropped afterwards."""
    url: str
    cleanup = None
    try:
        if name == "memory":
            url = "memory://"
        elif name == "rq":
            url = "rq+" + SERVERS.redis().fresh_database()
        elif name == "procrastinate":
            pg = SERVERS.postgres()
            url = pg.create_database()
            cleanup = pg.drop_database
            url = "procrastinate+" + url
        else:
            env = os.environ.get(f"CUTOVER_TEST_{name.upper()}_URL")
            if not env:
                pytest.skip(f"adapter {name!r}: set CUTOVER_TEST_{name.upper()}_URL to test it")
            url = f"{name}+{env}"
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise
    try:
        yield url
    finally:
        if cleanup is not None:
            cleanup(url.split("+", 1)[1])


@contextlib.contextmanager
def backend_for(name: str) -> Iterator[QueueBackend]:
    """Open an isolated backend of adapter ``name`` on the session's servers."""
    with served_url(name) as url:
        backend = adapters.open_backend(url)
        try:
            yield backend
        finally:
            backend.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cutover_backend" in metafunc.fixturenames:
        names = sorted(adapters.available(), key=lambda n: (n not in SERVED, n))
        metafunc.parametrize("cutover_backend", names, indirect=True)


@pytest.fixture
def cutover_backend(request: pytest.FixtureRequest) -> Iterator[QueueBackend]:
    """An isolated, empty backend of each installed adapter."""
    with backend_for(request.param) as backend:
        yield backend


@pytest.fixture
def cutover_database_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database (procrastinate's schema applied), dropped after."""
    try:
        pg = SERVERS.postgres()
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise
    url = pg.create_database()
    yield url
    pg.drop_database(url)


@pytest.fixture
def cutover_redis_url() -> str:
    """The URL of a reserved, flushed Redis database."""
    try:
        return SERVERS.redis().fresh_database()
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    SERVERS.stop()
