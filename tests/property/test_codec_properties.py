import datetime as dt
import decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cutover import codec

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
           | st.binary() | st.datetimes() | st.datetimes(timezones=st.just(dt.UTC)) | st.dates()
           | st.times() | st.uuids() | st.timedeltas()
           | st.decimals(allow_nan=False).map(lambda d: decimal.Decimal(str(d))))
hashables = st.none() | st.booleans() | st.integers() | st.text() | st.binary() | st.uuids()
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(), inner, max_size=4)
                   | st.dictionaries(hashables, inner, max_size=3)
                   | st.frozensets(hashables, max_size=3) | st.sets(hashables, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=300)
@given(values)
def test_every_supported_value_round_trips(value: Any) -> None:
    text = codec.dumps(value)
    assert codec.loads(text) == value
    assert codec.dumps(codec.loads(text)) == text
