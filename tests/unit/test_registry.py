import datetime as dt

import pytest

from cutover import TaskRegistry
from cutover.errors import DuplicateTaskError, UnknownTaskError, UnsupportedValueError
from cutover.record import JobRecord


def send_email(to: str, subject: str = "hi", *, urgent: bool = False) -> str:
    return to


def variadic(first: int, *rest: int) -> int:
    return first + sum(rest)


def test_default_name_is_module_qualname_and_function_is_returned() -> None:
    registry = TaskRegistry()
    decorated = registry.task(send_email)
    assert decorated is send_email
    assert f"{__name__}.send_email" in registry


def test_decorator_with_options_sets_defaults() -> None:
    registry = TaskRegistry()

    @registry.task(name="mail.send", queue="mail", max_attempts=4, backoff=2,
                   aliases=("old.send",))
    def send(to: str) -> None:
        return None

    task = registry.resolve("old.send")
    assert task.name == "mail.send" and task.queue == "mail"
    assert task.retry_intervals == (2.0, 4.0, 8.0)
    assert registry.resolve(send) is task


def test_explicit_backoff_list() -> None:
    registry = TaskRegistry()
    task = registry.register(send_email, max_attempts=3, backoff=[1, 30])
    assert task.retry_intervals == (1.0, 30.0)


def test_positional_args_bind_to_names() -> None:
    registry = TaskRegistry()
    registry.register(send_email)
    record = registry.make_record(send_email, ("a@b.c", "subj"), {"urgent": True})
    assert record.args == ()
    assert dict(record.kwargs) == {"to": "a@b.c", "subject": "subj", "urgent": True}


def test_var_positional_args_stay_positional() -> None:
    registry = TaskRegistry()
    registry.register(variadic)
    record = registry.make_record(variadic, (1, 2, 3))
    assert record.args == (1, 2, 3) and dict(record.kwargs) == {}


def test_arguments_that_do_not_fit_are_refused() -> None:
    registry = TaskRegistry()
    registry.register(send_email)
    with pytest.raises(UnsupportedValueError, match="do not fit"):
        registry.make_record(send_email, (), {"nobody": 1})


def test_uncarriable_argument_is_reported_by_name() -> None:
    registry = TaskRegistry()
    registry.register(send_email)
    with pytest.raises(UnsupportedValueError, match=r"kwargs\['to'\]"):
        registry.make_record(send_email, (object(),))


def test_unknown_task_suggests_close_names() -> None:
    registry = TaskRegistry()
    registry.register(send_email, name="app.tasks.send_email")
    with pytest.raises(UnknownTaskError, match=r"did you mean 'app\.tasks\.send_email'"):
        registry.resolve("app.task.send_email")
    with pytest.raises(UnknownTaskError, match="did you mean"):
        registry.resolve("moved.module.send_email")


def test_duplicate_names_are_refused() -> None:
    registry = TaskRegistry()
    registry.register(send_email, name="x", aliases=("y",))
    with pytest.raises(DuplicateTaskError):
        registry.register(variadic, name="y")


def test_normalize_binds_stored_positional_args() -> None:
    registry = TaskRegistry()
    registry.register(send_email, aliases=("legacy.send",))
    stored = JobRecord(id="1", task="legacy.send", args=("a@b.c",))
    normal = registry.normalize(stored)
    assert normal.task == f"{__name__}.send_email"
    assert dict(normal.kwargs) == {"to": "a@b.c"} and normal.args == ()


def test_record_keeps_run_at_to_the_second_in_utc_never_early() -> None:
    record = JobRecord(id="1", task="t", run_at=dt.datetime(2026, 1, 1, 12, 0, 0, 999))
    assert record.run_at == dt.datetime(2026, 1, 1, 12, 0, 1, tzinfo=dt.UTC)  # rounded up
    whole = JobRecord(id="2", task="t", run_at=dt.datetime(2026, 1, 1, 12, 0, 1))
    assert whole.run_at == dt.datetime(2026, 1, 1, 12, 0, 1, tzinfo=dt.UTC)  # kept
    assert whole.replace(run_at=whole.run_at).digest() == whole.digest()  # idempotent


def test_retry_delay_repeats_the_last_interval() -> None:
    record = JobRecord(id="1", task="t", max_attempts=5, retry_intervals=(1, 2))
    assert [record.retry_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 2.0, 2.0]


def test_digest_ignores_state_but_not_content() -> None:
    record = JobRecord(id="1", task="t", kwargs={"a": 1})
    assert record.digest() == record.replace(origin="rq", location="x").digest()
    assert record.digest() != record.replace(kwargs={"a": 2}).digest()
    assert set(record.differences(record.replace(queue="q"))) == {"queue"}
