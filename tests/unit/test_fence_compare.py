"""The shadow dry run's comparison of a target copy with its source copy (pure)."""

from __future__ import annotations

from cutover.fence import compare

BASE = {"id": "j1", "task": "t", "args": [1], "kwargs": {}, "queue": "default", "priority": 0,
        "run_at": None, "attempts": 0, "max_attempts": 3, "retry_intervals": [1.0],
        "job_key": None}


def test_equal_copies_have_no_differences() -> None:
    assert compare(dict(BASE), dict(BASE)) == {}


def test_a_changed_field_is_named_with_both_values() -> None:
    assert compare({**BASE, "args": [2]}, dict(BASE)) == {"args": ([2], [1])}
    assert compare({**BASE, "queue": "q2"}, dict(BASE)) == {"queue": ("q2", "default")}


def test_what_a_run_of_the_source_copy_changed_is_not_a_difference() -> None:
    ran = {**BASE, "attempts": 1, "run_at": "2026-01-01T00:00:00+00:00"}
    assert compare(dict(BASE), ran) == {}
    # ...but the same fields differ when the source copy has not been attempted.
    assert compare(dict(BASE), {**BASE, "run_at": "2026-01-01T00:00:00+00:00"}) == {
        "run_at": (None, "2026-01-01T00:00:00+00:00")}
    # ...and a run changes nothing else.
    assert compare(dict(BASE), {**ran, "args": [9]}) == {"args": ([1], [9])}
