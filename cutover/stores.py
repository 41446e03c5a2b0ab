"""Which store a backend is connected to, and the refusals that follow from it.

URLs are spellings: ``redis://127.0.0.1:6379/7`` and ``redis://localhost:6379/7`` are one store,
and so are two PostgreSQL URLs of one database. A drain from a store into itself would put each
job where it already is and then release (delete) the only copy, so a move, a verify or an audit
against a target is refused when both sides are one store, whatever the URLs look like. The
ledger, the runs and the pair lock key on the store's identity for the same reason.
"""

from __future__ import annotations

from collections.abc import Collection

from cutover.backend import QueueBackend, StoreIdentity
from cutover.errors import PreconditionError, SameStoreError


def distinct(source: QueueBackend, target: QueueBackend,
             doing: str) -> tuple[StoreIdentity, StoreIdentity]:
    """The identities of source and target; :class:`SameStoreError` (exit 2) when they are one
    store."""
    s, t = source.identity(), target.identity()
    # Asked again: a side that could not write its store's marker (read-only credentials) and
    # fell back on something weaker reads the marker the other side just wrote, if one store.
    s = source.identity()
    if s.key == t.key:
        raise SameStoreError(
            f"refusing to {doing}: --source {s.url} and --target {t.url}: they are the same "
            f"store ({s.key}). A drain from a store into itself would delete every job it "
            "moves: name two different stores")
    return s, t


def require_queues(backend: QueueBackend, queues: Collection[str] | None) -> None:
    """Refuse (exit 3) ``--queue`` names that name no queue of ``backend``: a typo would
    otherwise move nothing and exit 0."""
    if not queues:
        return
    known = set(backend.counts())
    missing = sorted(set(queues) - known)
    if missing:
        raise PreconditionError(
            f"no queue named {', '.join(map(repr, missing))} on {backend.url}; its queues: "
            + (", ".join(sorted(known)) or "none (it holds no jobs)"))
