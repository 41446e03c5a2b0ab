"""assert_native_parity: the cutover worker and each backend's own worker agree."""

from __future__ import annotations

import datetime as dt
import decimal

import pytest

from cutover import codec
from cutover.errors import ConfigurationError
from cutover.record import JobState
from cutover.testing import ParityError, assert_native_parity, tasks
from cutover.testing.contract import SAMPLE_KWARGS
from cutover.testing.native import WAYS
from cutover.testing.tasks import registry
from tests.integration import native_tasks

pytestmark = [pytest.mark.rq, pytest.mark.pg]


def test_rich_arguments_and_results_agree_on_every_worker() -> None:
    outcomes = assert_native_parity(registry, tasks.echo, **SAMPLE_KWARGS)
    assert list(outcomes) == list(WAYS)
    for outcome in outcomes.values():
        assert outcome.state is JobState.FINISHED
        assert outcome.calls == [{"args": [], "kwargs": SAMPLE_KWARGS}]
        assert type(outcome.calls[0]["kwargs"]["pair"]) is tuple


def test_failures_and_retry_budgets_agree_on_every_worker() -> None:
    failed = assert_native_parity(registry, tasks.boom, message="nope")
    assert {(o.state, o.error, o.attempts) for o in failed.values()} == {
        (JobState.FAILED, "ValueError: nope", 1)}
    retried = assert_native_parity(registry, tasks.flaky, key="native", failures=2,
                                   _setup=tasks.reset)
    assert {(o.state, o.result, o.attempts) for o in retried.values()} == {
        (JobState.FINISHED, "ok after 3", 3)}
    spent = assert_native_parity(registry, tasks.flaky, key="spent", failures=5,
                                 _setup=tasks.reset)
    assert {(o.state, o.attempts, len(o.calls)) for o in spent.values()} == {
        (JobState.FAILED, 3, 3)}


def test_a_worker_that_differs_is_named_in_the_diff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A procrastinate App without the wrapper (here: one that skips decoding) is caught."""
    from cutover_procrastinate import native

    monkeypatch.setattr(native._Side, "call", lambda self, raw, job_id: ((), raw))
    with pytest.raises(ParityError) as err:
        assert_native_parity(registry, tasks.echo, _ways=["cutover:procrastinate",
                                                          "procrastinate"], **SAMPLE_KWARGS)
    assert "calls" in str(err.value) and "procrastinate" in str(err.value)


def test_unknown_ways_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown way"):
        assert_native_parity(registry, tasks.add, 1, 2, _ways=["celery"])


def test_coroutine_tasks_and_positional_args_agree_on_every_worker() -> None:
    gathered = assert_native_parity(native_tasks.registry, native_tasks.gather,
                                    d=decimal.Decimal("1.5"), day=dt.date(2026, 1, 2))
    assert {(o.state, codec.canonical(o.result)) for o in gathered.values()} == {
        (JobState.FINISHED, codec.canonical({"n": 2}))}
    kinds = assert_native_parity(native_tasks.registry, native_tasks.kinds, "first",
                                 (1, 2), {3}, named=b"x")
    for outcome in kinds.values():
        assert outcome.calls == [{"args": ["first", (1, 2), {3}], "kwargs": {"named": b"x"}}]
        assert outcome.result == 2
