"""What a store can hold: the checks an adapter's ``cannot_hold`` and the ledger share.

A job a target cannot hold must be found before it moves (audit, ``drain --dry-run`` and the
drain classify it ``unsupported``, with these reasons), not by a failed put halfway through a
batch. Each adapter declares its own limits with ``QueueBackend.cannot_hold``; the ledger (text
columns in PostgreSQL, ids passed joined by newlines) adds :func:`ledger_limits` for every pair.
"""

from __future__ import annotations

from cutover.errors import UnsupportedValueError
from cutover.record import JobRecord

INT32 = (-(2**31), 2**31 - 1)


def text_limits(value: str | None, what: str, *, max_chars: int | None = None,
                newline: bool = True, empty: bool = True) -> list[str]:
    """Why ``value`` cannot be stored as PostgreSQL text (or a similar store), if it cannot:
    NUL (PostgreSQL text refuses it), not encodable as UTF-8 (a lone surrogate), too long,
    a newline where ids are passed one per line, or empty where a name is required."""
    if value is None:
        return []
    out = []
    if not value and not empty:
        out.append(f"{what} is empty")
    if "\x00" in value:
        out.append(f"{what} contains a NUL character")
    if not newline and ("\n" in value or "\r" in value):
        out.append(f"{what} contains a line break")
    if not value.isascii():  # (the usual ASCII name needs no encoding to know)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            out.append(f"{what} is not valid UTF-8 text (a lone surrogate)")
    if max_chars is not None and len(value) > max_chars:
        out.append(f"{what} is {len(value)} characters long (at most {max_chars})")
    return out


def int_limits(value: int, what: str, bounds: tuple[int, int] = INT32) -> list[str]:
    if bounds[0] <= value <= bounds[1]:
        return []
    return [f"{what} {value} is out of range ({bounds[0]}..{bounds[1]})"]


def size_limits(record: JobRecord, what: str, max_bytes: int) -> list[str]:
    """The job's content (its canonical JSON, args included) larger than a store's value."""
    try:
        text = record.content_json()
    except UnsupportedValueError:  # reported as such by the classification
        return []
    if len(text) * 4 <= max_bytes:  # at most 4 bytes a character: no need to encode to know
        return []
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= max_bytes:
        return []
    return [f"the job is {size:,} bytes of JSON; {what} holds at most {max_bytes:,}"]


def ledger_limits(record: JobRecord) -> list[str]:
    """What the ledger (PostgreSQL text, ids joined by newlines) cannot record: a job it cannot
    record cannot move to any target, since its move could not be proved."""
    return [*text_limits(record.id, "job id", newline=False, empty=False),
            *text_limits(record.task, "task name"), *text_limits(record.queue, "queue name"),
            *text_limits(record.job_key, "job key")]
