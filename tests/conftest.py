"""Fixtures shared by the integration and fault tests."""

from __future__ import annotations

import pytest

from cutover.testing import tasks
from tests.integration.drain_helpers import invoke


@pytest.fixture
def urls(cutover_redis_url: str, cutover_database_url: str) -> tuple[str, str]:
    """(RQ URL, PostgreSQL URL): a fresh Redis database as the source, a fresh PostgreSQL
    database as the target and the control plane's (``cutover init`` run), and the test tasks'
    call log emptied."""
    tasks.reset()
    assert invoke(cutover_redis_url, cutover_database_url, "init", "--yes").exit_code == 0
    return cutover_redis_url, cutover_database_url
