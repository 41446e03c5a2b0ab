"""Transaction-pooler detection of the control plane, without a server."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cutover.control import ControlPlane
from cutover.errors import ConfigurationError


class FakeConnection:
    """Answers ``SELECT pg_backend_pid()`` with the pids given, in turn."""

    closed = False

    def __init__(self, pids: list[int]) -> None:
        self._pids = itertools.cycle(pids)

    def execute(self, query: str, *args: Any) -> FakeConnection:
        assert "pg_backend_pid" in query
        self._row = (next(self._pids),)
        return self

    def fetchone(self) -> tuple[int]:
        return self._row


def plane_with(pids: list[int]) -> ControlPlane:
    plane = ControlPlane("postgresql://u:secret@db.example/app", schema="cutover")
    plane._local.conn = FakeConnection(pids)
    return plane


def test_control_backend_changing_between_transactions_means_a_pooler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUTOVER_CONTROL_POOLING", raising=False)
    plane = plane_with([101, 102])
    assert plane.pooled()
    with pytest.raises(ConfigurationError, match=r"transaction pooler.*session mode") as err:
        plane.lock_pair("a", "b")
    assert "secret" not in str(err.value)


def test_control_one_backend_throughout_is_a_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUTOVER_CONTROL_POOLING", raising=False)
    assert not plane_with([7]).pooled()


@pytest.mark.parametrize(("value", "pooled"), [("transaction", True), ("Session", False)])
def test_control_pooling_declared_wins_over_the_probe(monkeypatch: pytest.MonkeyPatch,
                                                      value: str, pooled: bool) -> None:
    monkeypatch.setenv("CUTOVER_CONTROL_POOLING", value)
    assert plane_with([1, 2] if not pooled else [1]).pooled() is pooled


def test_control_pooling_rejects_an_unknown_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTOVER_CONTROL_POOLING", "statement")
    with pytest.raises(ConfigurationError, match="CUTOVER_CONTROL_POOLING"):
        plane_with([1]).pooled()
