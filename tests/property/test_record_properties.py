import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cutover import TaskRegistry, codec
from cutover.record import CONTENT_FIELDS, JobRecord, JobState
from tests.property.test_codec_properties import values


@settings(max_examples=200)
@given(kwargs=st.dictionaries(st.text(), values, max_size=4),
       args=st.lists(values, max_size=3),
       key=st.none() | st.text(),
       run_at=st.none() | st.datetimes(timezones=st.just(dt.UTC)),
       intervals=st.lists(st.floats(min_value=0, max_value=1e6), max_size=3))
def test_cached_content_json_is_the_canonical_content(kwargs: dict[str, Any], args: list[Any],
                                                      key: str | None, run_at: dt.datetime | None,
                                                      intervals: list[float]) -> None:
    record = JobRecord(id="x", task="t", args=tuple(args), kwargs=kwargs, job_key=key,
                       run_at=run_at, retry_intervals=tuple(intervals))
    assert record.content_json() == codec.canonical(record.content())
    assert record.replace(queue="other").digest() != record.digest()
    # A copy in another state keeps the computed encodings; one with other content does not.
    moved = record.replace(state=JobState.HELD, holder="h", location="l")
    assert moved.digest() == record.digest()
    assert moved.replace(attempts=3).content_json() == codec.canonical(
        moved.replace(attempts=3).content())
    assert moved.replace(args=(*args, 1)).digest() != record.digest()


def test_content_fields_are_the_content() -> None:
    # replace() carries the memo over when none of these change: they must be what content()
    # (and so the digest) covers.
    assert set(JobRecord(id="x", task="t").content()) == CONTENT_FIELDS


def plain(a: int, b: str = "x", c: float = 1.0) -> None:
    return None


@given(args=st.lists(st.integers(), max_size=4), kwargs=st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), st.integers(), max_size=3))
def test_fast_binding_agrees_with_inspect(args: list[int], kwargs: dict[str, int]) -> None:
    import inspect

    import pytest

    from cutover.errors import UnsupportedValueError

    task = TaskRegistry().register(plain)
    try:
        expected = inspect.signature(plain).bind(*args, **kwargs).arguments
    except TypeError:
        with pytest.raises(UnsupportedValueError):
            task.bind(args, kwargs)
        return
    assert task.bind(args, kwargs) == ((), dict(expected))
