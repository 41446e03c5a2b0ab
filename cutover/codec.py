"""The tagged JSON codec that carries job arguments across backends.

Plain JSON values pass through unchanged, so args written by plain Procrastinate code decode as
they are. Other supported types are written as tagged objects ``{"$cutover": TYPE, "v": VALUE}``
and come back as the same type with the same value: datetime (naive or aware), date, time,
timedelta, Decimal, UUID, bytes, tuple, set, frozenset, non-finite floats, dicts whose keys are
not strings, and strings that PostgreSQL's jsonb cannot store (NUL, lone surrogates). A dict
that itself looks like a tag is escaped, so any dict round-trips.

A value that cannot be carried raises :class:`~cutover.errors.UnsupportedValueError` naming its
path (``kwargs['user'].address``) and type: it is reported, never silently dropped.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from cutover.errors import DecodeError, UnsupportedValueError

TAG = "$cutover"

JSONValue = Any  # JSON-serialisable after encode()


# Where a value sits inside the top-level one: the name of the top, or (parent, step). Spelled
# out only for an error message; building the text for every value would cost more than the
# encoding.
Path = str | tuple[Any, Any]


def encode(value: Any, path: Path = "value") -> JSONValue:
    """Return a JSON-serialisable form of ``value`` that :func:`decode` turns back into it."""
    kind = type(value)  # exact types first: they are nearly all of what jobs carry
    if kind is str:
        return value if _plain_text(value) else _odd_text(value)
    if value is None or kind is int or kind is bool:
        return value
    if kind is list:
        return [encode(item, (path, i)) for i, item in enumerate(value)]
    if kind is dict:
        return _encode_dict(value, path)
    return _encode_other(value, path)


def _encode_dict(value: dict[Any, Any], path: Path) -> JSONValue:
    for k in value:
        if type(k) is not str or not _plain_text(k):
            pairs = [[encode(k, (path, ".key")), encode(v, (path, k))] for k, v in value.items()]
            return {TAG: "items", "v": pairs}
    encoded = {k: encode(v, (path, k)) for k, v in value.items()}
    if TAG in encoded:
        return {TAG: "dict", "v": encoded}
    return encoded


def _encode_other(value: Any, path: Path) -> JSONValue:
    if isinstance(value, int):  # bool and int subclasses (enums): JSON writes them as numbers
        return value
    if isinstance(value, str):
        return value if _plain_text(value) else _odd_text(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {TAG: "float", "v": repr(value)}
    if isinstance(value, dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, bytes | bytearray):
        return {TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list):
        return [encode(item, (path, i)) for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return {TAG: "tuple", "v": [encode(item, (path, i)) for i, item in enumerate(value)]}
    if isinstance(value, set | frozenset):
        items = [encode(item, (path, "{}")) for item in value]
        items.sort(key=_canonical)
        return {TAG: "frozenset" if isinstance(value, frozenset) else "set", "v": items}
    if isinstance(value, Mapping):
        if not isinstance(value, dict):
            raise UnsupportedValueError(
                f"{_spell(path)}: mapping type {type(value).__qualname__} cannot be carried")
        return _encode_dict(value, path)
    raise UnsupportedValueError(
        f"{_spell(path)}: a value of type {type(value).__module__}."
        f"{type(value).__qualname__} cannot be carried across backends")


def _odd_text(text: str) -> JSONValue:
    # NUL and lone surrogates: valid Python, refused by PostgreSQL's jsonb.
    raw = text.encode("utf-8", "surrogatepass")
    return {TAG: "str", "v": base64.b64encode(raw).decode("ascii")}


def _spell(path: Path) -> str:
    """``kwargs['user'][2].key`` from a path."""
    steps: list[Any] = []
    while isinstance(path, tuple):
        path, step = path
        steps.append(step)
    out = [path]
    for step in reversed(steps):
        out.append(step if step in (".key", "{}") else f"[{step!r}]" if isinstance(step, str)
                   else f"[{step}]")
    return "".join(out)


def _plain_text(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode(value: JSONValue) -> Any:
    """Invert :func:`encode`. Untagged JSON is returned as it is."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if TAG not in value:
        return {k: decode(v) for k, v in value.items()}
    kind, raw = value[TAG], value.get("v")
    try:
        return _DECODERS[kind](raw)
    except KeyError as exc:
        raise DecodeError(f"unknown codec tag {kind!r}") from exc
    except (TypeError, ValueError, decimal.InvalidOperation) as exc:
        raise DecodeError(f"malformed {kind!r} value {raw!r}: {exc}") from exc


def _decode_items(raw: Any) -> dict[Any, Any]:
    return {_hashable(decode(k)): decode(v) for k, v in raw}


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


_DECODERS: dict[str, Any] = {
    "float": float,
    "str": lambda raw: base64.b64decode(raw.encode("ascii"), validate=True).decode(
        "utf-8", "surrogatepass"),
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda raw: dt.timedelta(days=raw[0], seconds=raw[1], microseconds=raw[2]),
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
    "bytes": lambda raw: base64.b64decode(raw.encode("ascii"), validate=True),
    "tuple": lambda raw: tuple(decode(item) for item in raw),
    "set": lambda raw: {_hashable(decode(item)) for item in raw},
    "frozenset": lambda raw: frozenset(_hashable(decode(item)) for item in raw),
    "dict": lambda raw: {k: decode(v) for k, v in raw.items()},
    "items": _decode_items,
}


def _canonical(value: JSONValue) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Encode ``value`` and serialise it as canonical JSON (sorted keys, no spaces)."""
    return _canonical(encode(value))


def loads(text: str | bytes) -> Any:
    """Parse JSON text and decode it."""
    try:
        return decode(json.loads(text))
    except json.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from exc


def canonical(value: Any) -> str:
    """The canonical JSON text of a value, used for digests (equal values give equal text)."""
    return dumps(value)


def check(value: Any, path: Path = "value") -> list[str]:
    """Return the problems that stop ``value`` from being carried, one per offending path."""
    try:
        encode(value, path)
    except UnsupportedValueError as exc:
        return [exc.message]
    return []
