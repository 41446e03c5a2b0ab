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

import contextlib
import dataclasses
import json
from typing import Any

import rq

from cutover import codec
from cutover.errors import DecodeError, UnsupportedValueError
from cutover.record import JobRecord
from cutover_rq.decode import decode_meta

SERIALIZERS: dict[str, Any] = {"pickle": rq.serializers.DefaultSerializer,
                               "json": rq.serializers.JSONSerializer}
#: Integer fields of the hash carried as they are (RQ's ``restore`` reads them the same way).
_INT_FIELDS = ("timeout", "result_ttl", "failure_ttl", "ttl")
#: The hash field that says which keyword args were positional when the job was written.
POSITIONAL_FIELD = "cutover_positional"


def read_memory(h: dict[bytes, bytes], serializer: str | None) -> tuple[dict[str, Any], bool]:
    """``record.native["rq"]`` for a job hash, and whether its meta (if any) was carried."""
    memory: dict[str, Any] = {}
    if serializer is not None:
        memory["serializer"] = serializer
    description = h.get(b"description")
    if description:
        memory["description"] = description.decode("utf-8", "replace")
    for name in _INT_FIELDS:
        raw = h.get(name.encode())
        if raw:
            # not a number RQ wrote: left out, so RQ's default applies on the way back
            with contextlib.suppress(ValueError):
                memory[name] = int(raw)
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


@dataclasses.dataclass(frozen=True)
class WriteFormat:
    """How one record is written to RQ: the serializer, the call as its producer wrote it, and
    the options of ``Job.create`` (description, timeout, TTLs, meta)."""

    serializer: str
    args: Any
    kwargs: Any
    options: dict[str, Any]
    positional: list[str]


def write_format(record: JobRecord, learned: str) -> WriteFormat:
    """The job's own memory first; ``learned`` (the queue's serializer) for a job without one."""
    memory: dict[str, Any] = dict(record.native.get("rq") or {})
    serializer = memory.get("serializer")
    if serializer not in SERIALIZERS:
        serializer = learned
    args: list[Any] = list(record.args)
    kwargs: dict[str, Any] = dict(record.kwargs)
    names = record.native.get("positional") or []
    if names and not args and all(isinstance(n, str) and n in kwargs for n in names):
        args = [kwargs.pop(n) for n in names]
    else:
        names = []
    options: dict[str, Any] = {k: memory[k] for k in ("description", *_INT_FIELDS)
                               if isinstance(memory.get(k), str | int)}
    meta = codec.decode(memory["meta"]) if isinstance(memory.get("meta"), dict) else None
    if serializer == "json":
        # Plain JSON passes the codec unchanged; only values JSON cannot hold are tagged.
        return WriteFormat(serializer, codec.encode(args), codec.encode(kwargs),
                           {**options, **({"meta": codec.encode(meta)} if meta else {})},
                           list(names))
    # RQ's enqueue hands the job a tuple of args (pickle keeps it a tuple)
    return WriteFormat(serializer, tuple(args), kwargs,
                       {**options, **({"meta": meta} if meta else {})}, list(names))
