"""What a plain procrastinate App (one not built by ``cutover_procrastinate.make_app``) would
get wrong about a job once it is in PostgreSQL: information for the audit, not a refusal.

Procrastinate keeps a job's keyword arguments as JSON and nothing else. A value the codec had to
tag (Decimal, datetime, UUID, bytes, tuple, set...) reaches a plain task as the tag itself, a
``{"$cutover": ...}`` dict; positional ``*args`` live in the adapter's ``cutover_jobs`` table,
which a plain worker does not read; so does the job's own retry budget. ``make_app`` handles all
three; plain JSON arguments need nothing.
"""

from __future__ import annotations

from typing import Any

from cutover.codec import TAG
from cutover.errors import UnsupportedValueError
from cutover.record import JobRecord


def _first_tag(value: Any) -> str | None:
    """The kind of the first tagged value inside ``value`` (encoded form), or None."""
    if isinstance(value, list):
        for item in value:
            found = _first_tag(item)
            if found:
                return found
        return None
    if isinstance(value, dict):
        if TAG in value:
            return str(value[TAG])
        for item in value.values():
            found = _first_tag(item)
            if found:
                return found
    return None


def plain_procrastinate_misreads(record: JobRecord) -> list[str]:
    """Each way a plain procrastinate worker would run this job differently from the cutover
    worker (and from ``make_app``); empty when it would run it the same."""
    try:
        encoded = record.encoded_kwargs()
    except UnsupportedValueError:
        return []  # the audit classifies it unsupported; it does not move
    out: list[str] = []
    if TAG in encoded:
        out.append(f"all keyword args arrive as one tagged {encoded[TAG]!r} dict")
    else:
        for name, value in encoded.items():
            kind = _first_tag(value)
            if kind:
                out.append(f"{name!r} arrives as a tagged dict ({kind}), not the value")
    if record.args:
        out.append("positional *args are dropped")
    if record.max_attempts > 1:
        out.append(f"its retry budget ({record.max_attempts} attempts) is ignored")
    return out
