"""Safe decoding of RQ job payloads.

RQ stores ``zlib(serializer.dumps((func_name, instance, args, kwargs)))`` and does not record the
serializer. We sniff it (pickle starts with ``0x80``, JSON with ``[``) and never run the
unrestricted unpickler: :class:`RestrictedUnpickler` resolves only the globals of plain data
(datetime, Decimal, UUID, set...). A payload that reaches for anything else (``os.system``,
``builtins.eval``, an application class) raises :class:`QuarantinedJobError` with the global it
wanted; nothing in it runs.
"""

from __future__ import annotations

import io
import json
import pickle
import zlib
from typing import Any

from cutover.errors import DecodeError, QuarantinedJobError

#: (module, name) pairs a payload may load. Everything else is quarantined.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("uuid", "UUID"), ("uuid", "SafeUUID"),
    ("_codecs", "encode"),  # protocol 2 pickles of bytes
})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise QuarantinedJobError(f"payload needs the global {module}.{name}, which is not "
                                      "allowed; quarantined, not run", needs=f"{module}.{name}")
        return super().find_class(module, name)


def decompress(raw: bytes) -> bytes:
    """RQ compresses ``data``; like RQ, fall back to the raw bytes when it is not zlib."""
    try:
        return zlib.decompress(raw)
    except zlib.error:
        if raw[:1] in (b"\x80", b"["):
            return raw
        raise DecodeError("data is neither zlib-compressed nor a pickle/JSON payload") from None


def payload_kind(raw: bytes) -> str:
    """``"pickle"`` or ``"json"``: which of RQ's serializers wrote a ``data`` field (RQ does not
    record it; results must be written with the same one)."""
    try:
        head = decompress(raw)[:1]
    except DecodeError:
        return "pickle"
    return "json" if head == b"[" else "pickle"


def loads(payload: bytes) -> Any:
    """Decode a (decompressed) payload with the restricted unpickler or JSON."""
    if payload[:1] == b"\x80":
        try:
            return RestrictedUnpickler(io.BytesIO(payload)).load()
        except QuarantinedJobError:
            raise
        except Exception as exc:  # truncated or corrupt pickles raise many kinds
            raise DecodeError(f"corrupt pickle payload: {type(exc).__name__}: {exc}") from exc
    if payload[:1] == b"[":
        # Plain JSON, as RQ's JSONSerializer hands it to the task: never the toolkit's codec,
        # whose tags are only ever written to Procrastinate (a producer's dict that looks like
        # a tag is that dict).
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise DecodeError(f"corrupt JSON payload: {exc}") from exc
    raise DecodeError("payload is neither pickle nor JSON")


def decode_meta(raw: bytes) -> dict[str, Any]:
    """A job's ``meta`` (RQ writes it with the job's serializer, uncompressed), through the
    restricted unpickler: raises QuarantinedJobError for anything but plain data."""
    if raw[:1] == b"\x80":
        value = loads(raw)
    else:
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise DecodeError(f"corrupt JSON meta: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError(f"meta is not a dict but {type(value).__name__}")
    return value


def decode_data(raw: bytes) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """``(func_name, args, kwargs)`` of a job's ``data`` field."""
    return decode_job(raw)[1:]


def decode_job(raw: bytes) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """``(serializer, func_name, args, kwargs)`` of a job's ``data`` field; the serializer is
    ``"pickle"`` or ``"json"``."""
    payload = decompress(raw)
    serializer = "pickle" if payload[:1] == b"\x80" else "json"
    value = loads(payload)
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise DecodeError("payload is not (func_name, instance, args, kwargs)")
    func_name, instance, args, kwargs = value
    if not isinstance(func_name, str) or not func_name:
        raise DecodeError(f"payload has no function name (got {type(func_name).__name__})")
    if instance is not None:
        raise QuarantinedJobError(f"bound-method job on an instance of {type(instance).__name__} "
                                  "cannot be carried")
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise DecodeError("payload args/kwargs have the wrong types")
    if not all(isinstance(k, str) for k in kwargs):
        raise DecodeError("payload kwargs have non-string names")
    return serializer, func_name, tuple(args), dict(kwargs)
