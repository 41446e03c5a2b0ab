"""Fixtures shared by integration modules: the fence's pairing and the Router's pair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_fence import Pairing
from tests.integration.test_router_phases import Pair


@pytest.fixture
def pairing(cutover_redis_url: str, cutover_database_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Pairing]:
    """RQ source, Procrastinate target holding the control plane; the fence tasks count their
    runs in the target's database."""
    monkeypatch.setenv("FENCE_RUNS_URL", cutover_database_url)
    p = Pairing(cutover_redis_url, cutover_database_url)
    yield p
    p.close()


@pytest.fixture
def pair(cutover_redis_url: str, cutover_database_url: str) -> Iterator[Pair]:
    """RQ source, Procrastinate target (the control plane there) for Router tests."""
    p = Pair(cutover_redis_url, cutover_database_url)
    yield p
    p.source.close()
    p.target.close()
    p.control.close()
