"""RQ's own job format: what a job remembers of how RQ stored it, and how it is written back.

RQ keeps facts about a job that no other backend has a place for: the serializer that wrote its
``data`` (pickle or JSON: RQ does not record which), its ``description``, ``timeout``,
``result_ttl``, ``failure_ttl``, ``ttl`` and ``meta``, and whether each argument was passed
positionally. They are read into ``record.native["rq"]`` (plain JSON, carried unchanged by every
backend) and ``record.native["positional"]``; a job written to RQ with that memory is written
the same way, so RQ's own workers of either serializer run it as its producer enqueued it.

``meta`` is pickled by RQ's default serializer: it is read through the restricted unpickler and
carried only when it is plain data; otherwise it stays a named loss (never unpickled in full).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import rq

from cutover import codec
from cutover.errors import DecodeError, UnsupportedValueError
from cutover.record import JobRecord
from cutover_rq.decode import decode_meta

SERIALIZERS: dict[str, Any] = {"pickle": rq.serializers.DefaultSerializer,
                               "json": rq.serializers.JSONSerializer}
#: Integer fields of the hash carried as they are (RQ's ``restore`` reads them the same way).
_INT_FIELDS = ("timeout", "result_ttl", "failure_ttl", "ttl")
_INT_KEYS = tuple((name, name.encode()) for name in _INT_FIELDS)
#: The hash field that says which keyword args were positional when the job was written.
POSITIONAL_FIELD = "cutover_positional"


def serializer_for(record: JobRecord, learned: Callable[[str], str]) -> str:
    """The serializer ``record`` is written with: its own memory, else ``learned(queue)``."""
    memory = record.native.get("rq") or {}
    remembered = memory.get("serializer")
    return remembered if remembered in SERIALIZERS else learned(record.queue)


def json_problems(record: JobRecord) -> list[str]:
    """What a JSON queue's RQ workers would not receive as written (checked before a move to a
    JSON queue): every value must be plain JSON, so that RQ's JSONSerializer gives it back
    unchanged. A Decimal, datetime, UUID, bytes, tuple or set would reach the task as the codec's
    tagged object (and a tuple as a list)."""
    out: list[tuple[str, str]] = []
    for name, value in (("args", list(record.args)), ("kwargs", dict(record.kwargs))):
        _json_walk(value, name, out)
    if not out:
        return []
    listed = ", ".join(f"{where} (a {kind})" for where, kind in out[:5])
    more = f" and {len(out) - 5} more" if len(out) > 5 else ""
    return [f"queue {record.queue!r} is a JSON queue (its jobs, or the URL, say so) and JSON "
            f"cannot hold {listed}{more}: RQ's JSON workers would receive something else"]


def _json_walk(value: Any, where: str, out: list[tuple[str, str]]) -> None:
    kind = type(value)
    if value is None or kind is bool or kind is int:
        return
    if kind is float:
        if not math.isfinite(value):
            out.append((where, f"non-finite float {value!r}"))
        return
    if kind is str:  # JSON carries any text (NUL and lone surrogates as \u escapes)
        return
    if kind is list:
        for i, item in enumerate(value):
            _json_walk(item, f"{where}[{i}]", out)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                out.append((f"{where}[{key!r}]", f"dict key {key!r}"))
            else:
                _json_walk(item, f"{where}[{key!r}]", out)
        return
    out.append((where, kind.__name__))


def read_memory(h: dict[bytes, bytes], serializer: str | None) -> tuple[dict[str, Any], bool]:
    """``record.native["rq"]`` for a job hash, and whether its meta (if any) was carried."""
    memory: dict[str, Any] = {}
    if serializer is not None:
        memory["serializer"] = serializer
    description = h.get(b"description")
    if description:
        memory["description"] = description.decode("utf-8", "replace")
    for name, key in _INT_KEYS:
        raw = h.get(key)
        if raw:
            try:
                memory[name] = int(raw)
            except ValueError:
                continue  # not a number RQ wrote: left out, RQ's default applies on the way back
    carried = True
    raw_meta = h.get(b"meta")
    if raw_meta:
        try:
            memory["meta"] = codec.encode(decode_meta(raw_meta), "meta")
        except (DecodeError, UnsupportedValueError):
            carried = False  # QuarantinedJobError is a DecodeError: nothing of it ran
    return memory, carried


def read_positional(h: dict[bytes, bytes], args: tuple[Any, ...], kwargs: dict[str, Any]
                    ) -> tuple[tuple[Any, ...], dict[str, Any], list[str] | None]:
    """A job written back by this adapter says which of its positional args had which name:
    read it in the bound form (the same digest as on any other backend). Jobs RQ producers
    wrote keep their positional args (the registry binds them)."""
    raw = h.get(POSITIONAL_FIELD.encode())
    if not raw:
        return args, kwargs, None
    try:
        names = json.loads(raw)
    except ValueError:
        return args, kwargs, None
    if (not isinstance(names, list) or len(names) != len(args)
            or not all(isinstance(n, str) and n not in kwargs for n in names)):
        return args, kwargs, None
    return (), {**dict(zip(names, args, strict=True)), **kwargs}, names


class WriteFormat(NamedTuple):
    """How one record is written to RQ: the serializer, the call as its producer wrote it, and
    the options of ``Job.create`` (description, timeout, TTLs, meta)."""

    serializer: str
    args: Any
    kwargs: Any
    options: dict[str, Any]
    positional: list[str]


_OPTIONS = ("description", *_INT_FIELDS)
_NO_MEMORY: dict[str, Any] = {}


def write_format(record: JobRecord, serializer: str) -> WriteFormat:
    """How to write ``record`` in ``serializer`` (see :func:`serializer_for`), with the
    description, timeout, TTLs, meta and positional args it remembers. (On the move back's hot
    path: a few microseconds a job.)"""
    memory = record.native.get("rq") or _NO_MEMORY
    args: Any = record.args
    kwargs: dict[str, Any] = dict(record.kwargs)
    names: list[str] = record.native.get("positional") or []
    if names and not args and all(type(n) is str and n in kwargs for n in names):
        args = tuple([kwargs.pop(n) for n in names])
    else:
        names = []
    options: dict[str, Any] = {}
    for key in _OPTIONS:
        value = memory.get(key)
        if type(value) is int or type(value) is str:
            options[key] = value
    meta = memory.get("meta")
    if type(meta) is dict and meta:
        options["meta"] = codec.decode(meta)
    if serializer == "json":
        # Plain JSON, never the codec's tags: RQ's JSON workers read it as it is (a value JSON
        # cannot hold is refused by json.dumps, and was refused earlier by json_problems).
        return WriteFormat(serializer, list(args), kwargs, options, list(names))
    # RQ's enqueue hands the job a tuple of args (pickle keeps it a tuple)
    return WriteFormat(serializer, tuple(args), kwargs, options, list(names))
