"""The fleet family: producers and cutover workers registered with the control plane, their
heartbeats and the epoch each acknowledged. SQL in ``sql/fleet.sql``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import os
import socket
import uuid
from typing import Any

from cutover.control.plane import Plumbing
from cutover.phases import Side

#: A member heartbeats every HEARTBEAT seconds; it is alive while its last heartbeat is within
#: LEASE (three missed beats).
HEARTBEAT = 5.0
LEASE = 3 * HEARTBEAT


class MemberKind(enum.StrEnum):
    PRODUCER = "producer"
    WORKER = "worker"


@dataclasses.dataclass(frozen=True)
class Member:
    """One registration of the fleet."""

    member: uuid.UUID
    kind: MemberKind
    side: Side | None
    backend: str | None
    host: str
    pid: int
    mode: str | None
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    acked_epoch: int
    metrics: dict[str, Any] | None
    native_ids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc.update(member=str(self.member), kind=self.kind.value,
                   side=self.side.value if self.side else None,
                   started_at=self.started_at.isoformat(),
                   heartbeat_at=self.heartbeat_at.isoformat())
        return doc


class Fleet(Plumbing):
    """Registrations, heartbeats and acknowledged epochs."""

    def register(self, kind: MemberKind | str, *, side: Side | str | None = None,
                 backend: str | None = None, mode: str | None = None, epoch: int = 0,
                 member: uuid.UUID | None = None) -> uuid.UUID:
        """Register this process (a producer or a worker); returns its member id."""
        member = member or uuid.uuid4()
        with self.tx("registering in the fleet") as conn:
            conn.execute(self.query("fleet_register"), {
                "member": member, "kind": MemberKind(kind).value,
                "side": Side(side).value if side else None, "backend": backend,
                "host": socket.gethostname(), "pid": os.getpid(), "mode": mode, "epoch": epoch})
        return member

    def heartbeat(self, member: uuid.UUID, *, mode: str | None = None,
                  metrics: dict[str, Any] | None = None,
                  native_ids: list[str] | None = None) -> bool:
        """Say this member is alive (and its mode, a metrics snapshot, the ids its backend's own
        worker registry knows it by). False when the member is not registered any more:
        register again."""
        with self.tx("heartbeating") as conn:
            row = conn.execute(self.query("fleet_heartbeat"), {
                "member": member, "mode": mode, "native_ids": native_ids,
                "metrics": json.dumps(metrics) if metrics is not None else None}).fetchone()
        return row is not None

    def ack_epoch(self, member: uuid.UUID, epoch: int) -> bool:
        """Record that this member acts on ``epoch`` (and finished what it did before it)."""
        with self.tx("acknowledging the epoch") as conn:
            row = conn.execute(self.query("fleet_ack"), {"member": member,
                                                         "epoch": epoch}).fetchone()
        return row is not None

    def alive(self, lease: float = LEASE, *, kind: MemberKind | str | None = None,
              side: Side | str | None = None) -> list[Member]:
        """Members whose last heartbeat is within ``lease`` seconds (database clock)."""
        with self.tx("reading the fleet") as conn:
            rows = conn.execute(self.query("fleet_alive"), {"lease": lease}).fetchall()
        members = [Member(r[0], MemberKind(r[1]), Side(r[2]) if r[2] else None, r[3], r[4],
                          int(r[5]), r[6], r[7], r[8], int(r[9]), r[10], tuple(r[11]))
                   for r in rows]
        return [m for m in members if (kind is None or m.kind == kind)
                and (side is None or m.side == side)]

    def member_here(self, member: uuid.UUID, conn: Any) -> bool:
        """Whether ``conn`` (another's connection) sees ``member``'s row: it is connected to
        this control plane's database (see ``fleet_member_here``)."""
        with self.tx("looking for the control plane", conn) as c:
            return c.execute(self.query("fleet_member_here"), {"member": member}).fetchone() \
                is not None

    def deregister(self, member: uuid.UUID) -> None:
        with self.tx("leaving the fleet") as conn:
            conn.execute(self.query("fleet_deregister"), {"member": member})

    def prune(self, older: float = 20 * LEASE) -> int:
        """Forget members silent for ``older`` seconds; returns how many."""
        with self.tx("pruning the fleet") as conn:
            return conn.execute(self.query("fleet_prune"), {"older": older}).rowcount
