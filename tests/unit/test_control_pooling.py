"""Transaction-pooler detection of the control plane, without a server."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cutover.cli.context import Context
from cutover.control import ControlPlane
from cutover.errors import ConfigurationError
from cutover.registry import TaskRegistry
from cutover.router import Router
from cutover.settings import ControlPooling, Settings


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


def plane_with(pids: list[int], pooling: ControlPooling = "auto") -> ControlPlane:
    plane = ControlPlane("postgresql://u:secret@db.example/app", schema="cutover",
                         pooling=pooling)
    plane._local.conn = FakeConnection(pids)
    return plane


def test_control_backend_changing_between_transactions_means_a_pooler() -> None:
    plane = plane_with([101, 102])
    assert plane.pooled()
    with pytest.raises(ConfigurationError, match=r"transaction pooler.*session mode") as err:
        plane.lock_pair("a", "b")
    assert "secret" not in str(err.value)


def test_control_one_backend_throughout_is_a_session() -> None:
    assert not plane_with([7]).pooled()


@pytest.mark.parametrize(("value", "pooled"), [("transaction", True), ("session", False)])
def test_control_pooling_declared_wins_over_the_probe(value: ControlPooling,
                                                      pooled: bool) -> None:
    assert plane_with([1, 2] if not pooled else [1], value).pooled() is pooled


@pytest.mark.parametrize(("value", "pooled"), [("transaction", True), ("Session", False),
                                               (" AUTO ", None)])
def test_control_pooling_comes_from_the_settings_never_the_environment(
        monkeypatch: pytest.MonkeyPatch, value: str, pooled: bool | None) -> None:
    # The variable reaches a plane through Settings (the CLI's, Router.from_env's) only.
    monkeypatch.setenv("CUTOVER_CONTROL_POOLING", "transaction")
    assert plane_with([1]).pooled() is False  # built without settings: probed, one backend
    settings = Settings.from_env({"CUTOVER_CONTROL_POOLING": value})
    plane = Context(settings.with_options(control="postgresql://db.example/app")).control_plane()
    assert plane._pooled is pooled and plane.pooling == value.strip().lower()
    router = Router.from_env(TaskRegistry(), settings.with_options(
        source="memory://pooling-a", target="postgresql://db.example/pooling-b"))
    assert router.pooling == value.strip().lower()


def test_control_pooling_rejects_an_unknown_value() -> None:
    with pytest.raises(ConfigurationError, match="CUTOVER_CONTROL_POOLING"):
        plane_with([1], "statement")  # type: ignore[arg-type]
    settings = Settings.from_env({"CUTOVER_CONTROL_POOLING": "statement"}).with_options(
        control="postgresql://db.example/app")
    with pytest.raises(ConfigurationError, match=r"CUTOVER_CONTROL_POOLING\)='statement'"):
        Context(settings).control_plane()
