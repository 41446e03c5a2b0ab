"""The drain's pipeline of ordered stages (cutover.drain.pipeline.Pipeline)."""

import threading
import time

import pytest

from cutover.drain.pipeline import Pipeline as _Pipeline


def feed(pipe: _Pipeline, n: int, pause: float) -> None:
    """Submit 0..n-1, a pause after each, as the drain's reader would."""
    with pipe:
        for i in range(n):
            pipe.submit(i)
            time.sleep(pause)


def test_stages_see_every_item_in_order() -> None:
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def first(item: int) -> int:
        time.sleep(0.001 * (item % 3))  # uneven work must not reorder
        with lock:
            seen.append(("first", item))
        return item * 10

    def second(item: int) -> None:
        with lock:
            seen.append(("second", item))

    with _Pipeline([("first", first), ("second", second)]) as pipe:
        for i in range(20):
            pipe.submit(i)
    assert [i for stage, i in seen if stage == "first"] == list(range(20))
    assert [i for stage, i in seen if stage == "second"] == [i * 10 for i in range(20)]


def test_an_error_stops_every_stage_and_is_raised() -> None:
    later: list[int] = []

    def put(item: int) -> int:
        if item == 3:
            raise RuntimeError("target went away")
        return item

    def release(item: int) -> None:
        later.append(item)

    with pytest.raises(RuntimeError, match="target went away"):
        feed(_Pipeline([("put", put), ("release", release)]), 50, 0.001)
    # What was put before the error is still released; nothing after it went on (the next run
    # finishes what was under way).
    assert later == [0, 1, 2]


def test_an_error_downstream_stops_the_stages_before_it() -> None:
    put: list[int] = []

    def release(item: int) -> None:
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        feed(_Pipeline([("put", lambda item: put.append(item) or item), ("release", release)]),
             20, 0.002)
    assert len(put) < 20


def test_the_callers_own_error_wins_and_the_threads_end() -> None:
    pipe = _Pipeline([("only", lambda item: item)])

    def feed() -> None:
        with pipe:
            pipe.submit(1)
            raise KeyError("reader failed")

    with pytest.raises(KeyError):
        feed()
    assert not any(t.is_alive() for t in pipe.threads)
