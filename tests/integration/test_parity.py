"""assert_parity: a user's parity test between the backends."""

from __future__ import annotations

import uuid

import pytest

from cutover import TaskRegistry
from cutover.record import JobState
from cutover.testing import ParityError, assert_parity, tasks
from cutover.testing.tasks import registry


def test_success_has_parity_on_every_backend() -> None:
    outcomes = assert_parity(registry, tasks.add, 1, 2)
    assert set(outcomes) == {"memory", "rq", "procrastinate"}
    assert {o.result for o in outcomes.values()} == {3}
    assert all(o.calls == [{"args": [], "kwargs": {"a": 1, "b": 2}}] for o in outcomes.values())


def test_failure_and_retries_have_parity() -> None:
    failed = assert_parity(registry, "cutover.testing.tasks.boom", message="nope")
    assert {o.state for o in failed.values()} == {JobState.FAILED}
    assert {o.error for o in failed.values()} == {"ValueError: nope"}
    retried = assert_parity(registry, tasks.flaky, key="parity", failures=1, _setup=tasks.reset)
    assert {o.attempts for o in retried.values()} == {2}


def test_rich_arguments_arrive_identically() -> None:
    from cutover.testing.contract import SAMPLE_KWARGS

    outcomes = assert_parity(registry, tasks.echo, **SAMPLE_KWARGS)
    assert all(o.calls[0]["kwargs"] == SAMPLE_KWARGS for o in outcomes.values())


def test_a_difference_fails_with_a_readable_diff() -> None:
    local = TaskRegistry()

    @local.task(name="tests.random_token")
    def random_token() -> str:
        return uuid.uuid4().hex

    with pytest.raises(ParityError) as err:
        assert_parity(local, "tests.random_token", _backends=["memory", "rq"])
    text = str(err.value)
    assert "result" in text and "memory" in text and "rq" in text
