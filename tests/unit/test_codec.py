import datetime as dt
import decimal
import enum
import math
import types
import uuid
from typing import Any

import pytest

from cutover import codec
from cutover.errors import DecodeError, UnsupportedValueError


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 2, 3, 4, 5),
        dt.datetime(2026, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.date(2026, 1, 2),
        dt.time(1, 2, 3, 4),
        dt.timedelta(days=-1, seconds=5, microseconds=7),
        decimal.Decimal("1.2300"),
        decimal.Decimal("-Infinity"),
        uuid.uuid4(),
        b"\x00\x01bytes",
        (1, (2, 3)),
        {1, 2, 3},
        frozenset({"a"}),
        {"$cutover": "looks like a tag"},
        {1: "int key", (2, 3): "tuple key"},
        "nul\x00inside",
        "lone \ud800 surrogate",
        {"key\x00": 1},
        [None, True, 1, 1.5, "s"],
    ],
)
def test_value_round_trips_exactly(value: Any) -> None:
    back = codec.loads(codec.dumps(value))
    assert back == value
    assert type(back) is type(value)


def test_non_finite_floats_round_trip() -> None:
    back = codec.loads(codec.dumps([math.inf, -math.inf, math.nan]))
    assert back[0] == math.inf and back[1] == -math.inf and math.isnan(back[2])


def test_untagged_json_passes_through() -> None:
    assert codec.decode({"a": [1, {"b": None}]}) == {"a": [1, {"b": None}]}


def test_uncarriable_value_is_named_by_path() -> None:
    class Custom:
        pass

    with pytest.raises(UnsupportedValueError) as err:
        codec.encode({"user": [1, Custom()]}, "kwargs")
    assert "kwargs['user'][1]" in str(err.value)
    assert "Custom" in str(err.value)
    assert codec.check({"ok": 1}) == []
    assert len(codec.check(object())) == 1


@pytest.mark.parametrize(("value", "where"), [
    ((1, [2, {"k": {3: object()}}]), "args[1][1]['k'][3]"),
    ({5: 1, object(): 2}, "args.key"),
    ({frozenset({object()})}, "args{}{}"),
    ([types.MappingProxyType({})], "args[0]: mapping type mappingproxy"),
])
def test_paths_of_nested_uncarriable_values(value: object, where: str) -> None:
    with pytest.raises(UnsupportedValueError) as err:
        codec.encode(value, "args")
    assert where in str(err.value)


def test_subclasses_of_plain_types_encode_as_their_values() -> None:
    class Level(enum.IntEnum):
        HIGH = 2

    class Colour(enum.StrEnum):
        RED = "red"

    assert codec.canonical([Level.HIGH, Colour.RED, True]) == '[2,"red",true]'


def test_canonical_text_ignores_set_and_key_order() -> None:
    assert codec.canonical({"b": 1, "a": {3, 1, 2}}) == codec.canonical({"a": {2, 3, 1}, "b": 1})


@pytest.mark.parametrize("bad", ['{"$cutover": "nope", "v": 1}', '{"$cutover": "date", "v": "x"}',
                                 "{not json"])
def test_malformed_input_raises_decode_error(bad: str) -> None:
    with pytest.raises(DecodeError):
        codec.loads(bad)
