"""The claims family: the fence that lets a job with a copy on each side run on one side only.
The verbs are SQL functions (migrations 0002, 0004) probing the primary key. SQL in
``sql/claims.sql``.

A claim belongs to one *enqueue* of a job, not to its id: ``claims`` holds a row per enqueue of
a cutover id (``generation`` 1, 2, ...; the primary key is ``(cutover_id, generation)``, so all
claims of an id are read by ``cutover_id``), told apart by the copy's enqueue stamp and the
attempts its backend recorded (see cutover.fence and migration 0004). The row also counts the
enqueue's attempts across both copies (the budget) and, once a retry released it, holds it
until the retry's time (the backoff).

Each verb is one statement: on the plane's own autocommit connection it is one round trip (no
BEGIN/COMMIT around it); given ``conn`` (a backend's transaction in the control plane's
database) it commits with the job's own start or outcome (see cutover.fence)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from cutover.control.plane import Plumbing
from cutover.phases import Side

#: A claim's lease, seconds: the holder extends it (heartbeat) while the job runs.
LEASE = 30.0


class ClaimState(enum.StrEnum):
    CLAIMED = "claimed"  # a member runs it (under its lease)
    DONE = "done"        # it ran to success on ``side``
    FAILED = "failed"    # it ran and failed on ``side`` (visible there, with its error)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A job's claim as it stands after a claim attempt: ``won`` says whether the caller holds
    it now (first claimant, its own again, or a takeover of an expired lease)."""

    cutover_id: str
    won: bool
    state: ClaimState
    side: Side
    member: uuid.UUID
    lease_until: dt.datetime
    takeovers: int
    #: Which enqueue of the id this claim belongs to (1, 2, ...: a requeue or a reused id
    #: starts the next).
    generation: int = 1
    #: Attempts of this enqueue so far across both copies, the running one included (0: not
    #: counted, a claim written before migration 0004).
    attempts: int = 0

    @property
    def finished(self) -> bool:
        """The job ran (to success or failure): the other copy is a duplicate."""
        return self.state is not ClaimState.CLAIMED


class Claims(Plumbing):
    """claim / extend / finish, and a read of a job's claim."""

    def claim(self, cutover_id: str, side: Side | str, member: uuid.UUID,
              lease: float = LEASE, conn: Any = None, *, stamp: dt.datetime | None = None,
              attempts: int = 0, fresh: bool = False) -> Claim:
        """Claim a copy of a job for ``member`` on ``side``: the claim of its enqueue, the one
        with the copy's enqueue ``stamp`` (``JobRecord.created_at``). The first claimant wins; a
        claim whose lease expired while still ``claimed`` is taken over (``takeovers`` counts
        it); a claim a retry released is claimable by either copy once its retry time came,
        not before; a finished claim is never taken (``won=False``, the finished state), unless
        this copy is a new enqueue by the backend's own tools on the side that finished it:
        ``attempts`` the copy's attempts as its backend recorded them, ``fresh`` whether it
        shows no run at all (see migration 0004). A won claim's ``attempts`` counts this
        enqueue's attempts across both copies, this one included."""
        with self.statement("claiming a job", conn) as c:
            row = c.execute(self.query("claim"), {
                "id": cutover_id, "side": Side(side).value, "member": member,
                "lease": lease, "stamp": stamp, "attempts": attempts,
                "fresh": fresh}).fetchone()
        assert row is not None  # the function returns the row it made or found
        return Claim(cutover_id, bool(row[0]), ClaimState(row[1]), Side(row[2]), row[3], row[4],
                     int(row[5]), int(row[6]), int(row[7]))

    def extend(self, cutover_id: str, member: uuid.UUID, lease: float = LEASE) -> bool:
        """The holder's heartbeat; False when the claim is no longer its own."""
        with self.statement("extending a claim") as conn:
            row = conn.execute(self.query("claim_extend"), {
                "id": cutover_id, "member": member, "lease": lease}).fetchone()
        return bool(row and row[0])

    def finish(self, cutover_id: str, member: uuid.UUID,
               state: ClaimState | str = ClaimState.DONE, conn: Any = None,
               generation: int | None = None) -> bool:
        """Record the outcome (done or failed) of the claim of enqueue ``generation`` (None:
        the one ``member`` holds); False when the caller no longer held the claim (its lease
        expired and another member took it over)."""
        value = ClaimState(state)
        if value is ClaimState.CLAIMED:
            raise ValueError("finish a claim as done or failed")
        with self.statement("finishing a claim", conn) as c:
            row = c.execute(self.query("claim_finish"), {
                "id": cutover_id, "member": member, "state": value.value,
                "generation": generation}).fetchone()
        return bool(row and row[0])

    def finish_later(self, cutover_id: str, member: uuid.UUID, state: ClaimState | str,
                     conn: Any, generation: int | None = None) -> Callable[[], bool]:
        """:meth:`finish` on ``conn`` in pipeline mode (a backend's outcome transaction):
        the statement is queued, not waited for; the returned function reads its answer once
        the transaction has committed (one round trip fewer)."""
        value = ClaimState(state)
        if value is ClaimState.CLAIMED:
            raise ValueError("finish a claim as done or failed")
        with self.statement("finishing a claim", conn) as c:
            cur = c.execute(self.query("claim_finish"), {
                "id": cutover_id, "member": member, "state": value.value,
                "generation": generation})

        def answer() -> bool:
            with self._errors("finishing a claim"):
                row = cur.fetchone()
            return bool(row and row[0])
        return answer

    def release(self, cutover_id: str, member: uuid.UUID, conn: Any = None,
                generation: int | None = None, delay: float = 0.0) -> bool:
        """Give the claim up for a retry in ``delay`` seconds: nobody claims it before (the
        backoff), either copy after, and the attempt count goes on. False when the caller
        did not hold it."""
        with self.statement("releasing a claim", conn) as c:
            row = c.execute(self.query("claim_release"), {
                "id": cutover_id, "member": member, "generation": generation,
                "delay": delay}).fetchone()
        return bool(row and row[0])

    def claim_of(self, cutover_id: str, stamp: dt.datetime | None = None, *,
                 any_stamp: bool = True) -> Claim | None:
        """A job's claim as it stands (a read: ``won`` is False), or None: the claim of the
        id's newest enqueue, or with ``any_stamp=False`` of the newest one with ``stamp``."""
        with self.statement("reading a claim") as conn:
            row = conn.execute(self.query("claim_get"), {
                "id": cutover_id, "stamp": stamp, "any": any_stamp}).fetchone()
        if row is None:
            return None
        return Claim(cutover_id, False, ClaimState(row[1]), Side(row[2]), row[3], row[4],
                     int(row[5]), int(row[6]), int(row[7]))

    def finished_before(self, older_than: float, limit: int) -> list[str]:
        """Ids of claims finished more than ``older_than`` seconds ago, oldest first, at most
        ``limit`` (a prune's candidates: see :func:`cutover.fence.prune_claims`)."""
        with self.statement("reading finished claims") as conn:
            rows = conn.execute(self.query("claims_finished_before"),
                                {"older": older_than, "limit": limit}).fetchall()
        return [str(r[0]) for r in rows]

    def prune_finished(self, ids: Sequence[str], older_than: float) -> int:
        """Delete these claims if still finished more than ``older_than`` seconds ago; how many
        were deleted."""
        if not ids:
            return 0
        with self.statement("pruning claims") as conn:
            return conn.execute(self.query("claims_prune"),
                                {"ids": list(ids), "older": older_than}).rowcount
