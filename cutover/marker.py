"""The cut-over marker: a store of a pair says, in its own data, that a staged cut-over began.

A cutover worker follows the staged cut-over only through the control plane. Started without
it (no ``--target``/``--control``, or a ``--control`` naming a database without the control
schema) it was a plain worker: in live it ran the source's copies outside the fence, and a job
whose target copy also ran ran twice. The control plane cannot stop a process that never reads
it, so the store itself carries the fact: once the phase leaves ``off`` (epoch > 0), the phase
command writes a marker into each store of the pair (after the transition commits; the first
move out of ``off`` also before it, so a command killed between the commit and the write leaves
no unmarked store), and every later phase command writes it again. A worker whose store carries
the marker and that has no usable control plane refuses to start (exit 2), naming the control
plane to pass.

Nothing in the toolkit clears a marker: a phase back to ``off`` still has epoch > 0 and the
source still runs through the fence there (a copy written in live may have run on the target).
A marker wrongly present costs one explicit flag (``cutover worker --unfenced --why TEXT``,
logged); a marker wrongly absent would let an unfenced worker run jobs twice. Once the pair is
retired (the source decommissioned, the control schema dropped, or the cut-over abandoned),
the operator removes it by hand: see runbooks/staged-cutover.md ("The cut-over marker").

A marker is also *compared*: a worker or Router that has a control plane follows it only if it
is the marker's (:func:`control_mismatch`): the same database, by identity (the cluster's system
identifier and the database, :meth:`~cutover.control.plane.Plumbing.identity`, not the URL's
spelling) and the same schema. A leftover control schema (an earlier cut-over's, a copy, another
``CUTOVER_SCHEMA``) exists and reads as a phase, but not this cut-over's: a worker following it
ran unfenced in live, a Router wrote the source only after complete. It is refused (exit 2),
both named, whatever exists in its database. A marker written before it carried the identity
(``control_key`` empty) is compared by schema and database name.

Adapters offer ``read_cutover_marker() -> str | None`` and ``write_cutover_marker(text)``
(optional, like ``native_workers``); the text is this module's JSON. It holds redacted URLs
only: never a password.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cutover.backend import QueueBackend
from cutover.errors import ConfigurationError
from cutover.urls import redact

log = logging.getLogger("cutover.marker")


@dataclasses.dataclass(frozen=True)
class CutoverMarker:
    """What a marked store says: where the control plane is (redacted URL, schema), the pair,
    and the phase and epoch of the transition that wrote it last."""

    control_url: str
    schema: str
    source_url: str
    target_url: str
    source_key: str = ""
    target_key: str = ""
    phase: str = ""
    epoch: int = 0
    at: str = ""
    #: The control plane's database by identity (ControlPlane.identity()): what is compared.
    control_key: str = ""

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> CutoverMarker:
        """The marker, or one naming nothing when its text is not ours (a store carrying
        something under the marker's key is still marked: refusing costs a flag)."""
        try:
            doc: Any = json.loads(text)
            fields = {f.name for f in dataclasses.fields(cls)}
            if not isinstance(doc, dict):
                raise ValueError(text)
            return cls(**{k: v for k, v in doc.items() if k in fields})
        except (ValueError, TypeError):
            return cls(control_url="?", schema="?", source_url="?", target_url="?")


def make(control_url: str, schema: str, source_key: str, source_url: str, target_key: str,
         target_url: str, phase: str, epoch: int, control_key: str = "") -> CutoverMarker:
    """A marker with every URL redacted (the control URL arrives with its password);
    ``control_key``: the control plane's identity (ControlPlane.identity())."""
    return CutoverMarker(control_url=redact(control_url), schema=schema,
                         source_url=redact(source_url), target_url=redact(target_url),
                         source_key=source_key, target_key=target_key, phase=phase,
                         epoch=epoch, at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                         control_key=control_key)


def _database(url: str) -> str:
    """The database a PostgreSQL URL names ('' when it does not say)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    named = parse_qs(parts.query).get("dbname")
    return named[-1] if named else parts.path.lstrip("/")


def control_mismatch(found: CutoverMarker, control_key: str, control_url: str,
                     schema: str) -> str | None:
    """How a control plane (its identity ``control_key``, its URL, its schema) differs from the
    one ``found`` names, or None when it is the marker's."""
    if found.schema != schema:
        return f"schema {schema!r}, not {found.schema!r}"
    if found.control_key:
        if found.control_key != control_key:
            return f"another database ({control_key}, not {found.control_key})"
        return None
    # A marker from before the identity was recorded: by the database's name.
    mine, theirs = _database(control_url), _database(found.control_url)
    if mine and theirs and mine != theirs:
        return f"database {mine!r}, not {theirs!r}"
    return None


def other_control(who: str, backend_url: str, found: CutoverMarker, control_url: str,
                  schema: str, why: str) -> ConfigurationError:
    """The refusal (exit 2) of ``who`` (a worker, a Router), whose control plane is not the
    marker's: both named, passwords redacted."""
    return ConfigurationError(
        f"{who}: {backend_url} is in a staged cut-over whose control plane is "
        f"{found.control_url} (CUTOVER_SCHEMA={found.schema}; phase {found.phase or '?'} "
        f"epoch {found.epoch} when last marked), but the control plane given is "
        f"{redact(control_url)} (CUTOVER_SCHEMA={schema}): {why}. A control schema there is "
        f"not this cut-over's (a leftover or a copy): following its phase would run and write "
        f"jobs outside the cut-over's fence. Give --control {found.control_url} "
        f"(CUTOVER_CONTROL) and CUTOVER_SCHEMA={found.schema}, or --target "
        f"{found.target_url} when the control plane is in the target's database")


def check_control(backend: QueueBackend, control: Any, who: str) -> None:
    """Refuse (:class:`ConfigurationError`, exit 2) ``control`` (a ControlPlane) when
    ``backend``'s store carries a marker naming another control plane (one marker read, and
    the plane's identity, read once)."""
    found = read(backend)
    if found is None:
        return
    why = control_mismatch(found, control.identity(), control.url, control.schema)
    if why is not None:
        raise other_control(who, backend.url, found, control.url, control.schema, why)


def read(backend: QueueBackend) -> CutoverMarker | None:
    """The marker ``backend``'s store carries, or None (also for an adapter without markers):
    one read."""
    reader = getattr(backend, "read_cutover_marker", None)
    if reader is None:
        return None
    text = reader()
    return None if text is None else CutoverMarker.loads(text)


def write(backend: QueueBackend, marker: CutoverMarker) -> bool:
    """Write (overwrite) ``marker`` into ``backend``'s store; False for an adapter without
    markers. Idempotent."""
    writer = getattr(backend, "write_cutover_marker", None)
    if writer is None:
        return False
    writer(marker.dumps())
    return True


def refuse_unfenced(backend: QueueBackend, marker: CutoverMarker, why_none: str) -> None:
    """Refuse (exit 2) a worker without a usable control plane on a marked store."""
    raise ConfigurationError(
        f"refusing to start: {backend.url} is in a staged cut-over ({marker.source_url} -> "
        f"{marker.target_url}, phase {marker.phase or '?'} epoch {marker.epoch} when last "
        f"marked) and this worker has no control plane ({why_none}): it would run jobs "
        f"outside the fence, twice when the other side's copy runs too. Pass the control "
        f"plane: --control {marker.control_url} (CUTOVER_SCHEMA={marker.schema}), or "
        f"--target {marker.target_url} when the control plane is in the target's database "
        f"(--source {marker.source_url} for a target worker). Only if the cut-over was "
        f"retired: --unfenced --why TEXT (see runbooks/staged-cutover.md, 'The cut-over "
        f"marker')")
