"""The producer facade: ``router.enqueue(task, ...)`` sends a job where the current phase says.

Where each phase writes is :func:`cutover.phases.writes`; this module only carries it out:

- ``off`` (or no control plane): the source only, exactly as the application did before;
- ``shadow`` and ``live``: the target first (its ledger row ``accepted`` in the same transaction
  when the target is the control plane's PostgreSQL database), then the source, under the same
  cutover id. If the source write fails, the target copy and its ledger row are removed and the
  error is raised: the caller gets an error or a job on both sides, never a silent half. A process
  killed between the two writes leaves a target-only copy with its ledger row, an id the caller
  never received: at-least-once, like any enqueue whose answer is lost; the shadow dry run finds
  no source copy and no finished claim, so it leaves that copy in place (never compared, never
  removed: it is the only one; see :meth:`cutover.fence.PhaseGate.foreign`), and the target runs
  it once it executes (``live`` on: the fence runs it once) or a rollback's move back moves it;
- ``rampdown`` and ``complete``: the target only. A rollback out of them into ``shadow`` leaves
  these target-only copies in place too (the dry run removes only a copy that has another one)
  until its move back moves them to the source.

A job key held by a live job on either side returns that job's id and leaves nothing new on
either side (a target copy written before the source said so is removed again); in ``rampdown``
a keyed call asks the source first, whose waiting jobs still run.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cutover import adapters, faults, marker
from cutover.backend import (
    KeyLookup,
    QueueBackend,
    StatementEnqueue,
    TransactionalEnqueue,
    TransactionalWork,
)
from cutover.control import ControlPlane, PhaseConflictError, control_url
from cutover.control.fleet import HEARTBEAT
from cutover.control.ledger import LedgerState
from cutover.control.watcher import REFRESH, STALE_AFTER, check_bounds
from cutover.errors import BackendUnavailableError, ConfigurationError, CutoverError
from cutover.metrics import METRICS, Metrics
from cutover.phases import Phase, Side, writes
from cutover.producer import Membership
from cutover.record import JobRecord
from cutover.registry import TaskRegistry
from cutover.settings import DEFAULT_SCHEMA, ControlPooling, Settings
from cutover.urls import redact

#: A Router without a control plane reads its source's cut-over marker on its first enqueue and
#: again at most this often (seconds): a cut-over started while it runs is seen within it.
MARKER_RECHECK = 60.0


@dataclass(frozen=True)
class Call:
    """One job for :meth:`Router.enqueue_many`: what :meth:`Router.enqueue` takes, as a value.

    ``Call(send_email, args=(user_id,), kwargs={"template": "welcome"}, job_key="welcome-42")``
    """

    task: str | Callable[..., Any]
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    job_key: str | None = None
    queue: str | None = None
    run_at: dt.datetime | None = None
    priority: int | None = None


log = logging.getLogger("cutover.router")


class Router:
    """Enqueue through the toolkit, where the current phase says (see the module's doc).

    Until a cut-over is started there is no control plane and the phase is ``off``: every job goes
    to the source backend only, exactly as the application did before (plus one read of the
    source's cut-over marker on the first enqueue and at most once a minute after it).
    With a control plane, the phase is read from one :class:`~cutover.control.PhaseWatcher` per
    Router (LISTEN + a re-read every ``refresh`` seconds), shared by its threads, never per call;
    the Router registers in the fleet as a producer, heartbeats, and acknowledges each epoch once
    its enqueues routed by older epochs have finished. After ``fork`` the child's Router drops the
    parent's connections and threads and starts its own on first use.

    A Router that cannot read the phase for ``stale_after`` seconds (default 10, below the fleet's
    15 s liveness lease) refuses enqueues with :class:`~cutover.errors.PhaseUnknownError` rather
    than route by a phase that may have moved on (a job sent to a side whose workers went idle
    would never run); it routes again as soon as the phase is read.

    A Router without a usable control plane (no target/control, or the control schema missing
    where it points) on a source that a staged cut-over marked (cutover.marker) refuses enqueues
    with :class:`~cutover.errors.ConfigurationError` naming the control plane to give: it would
    write RQ only, outside the fleet, and after ``complete`` its jobs would never run. The
    marker is read on the first such enqueue and at most every :data:`MARKER_RECHECK` seconds.
    ``unfenced="why"`` writes anyway (logged at WARNING), for a pair that was retired.

    Every enqueue call is timed and counted per backend in ``metrics`` (this process's
    :data:`cutover.metrics.METRICS` unless given another): latency, jobs, errors.
    """

    #: Whether the control plane is behind a transaction pooler (``Settings.control_pooling``,
    #: ``CUTOVER_CONTROL_POOLING``; :meth:`from_env` sets it): set before the first enqueue.
    pooling: ControlPooling = "auto"

    def __init__(self, registry: TaskRegistry, source: str, target: str | None = None, *,
                 control: str | None = None, metrics: Metrics | None = None,
                 refresh: float = REFRESH, heartbeat: float = HEARTBEAT,
                 stale_after: float = STALE_AFTER, schema: str = DEFAULT_SCHEMA,
                 unfenced: str | None = None) -> None:
        self.registry = registry
        self.unfenced = unfenced  # why it may write a marked source without the control plane
        self.schema = schema  # of the control plane (Settings.schema: CUTOVER_SCHEMA)
        self.source_url = source
        self.target_url = target
        self.metrics = METRICS if metrics is None else metrics
        self.refresh = refresh
        self.heartbeat = heartbeat
        check_bounds(refresh, stale_after)
        self.stale_after = stale_after
        self.control_url: str | None = None
        if target is not None:
            if adapters.split(source)[1] == adapters.split(target)[1]:
                raise ConfigurationError("the router's source and target are one store")
            try:
                self.control_url = control_url(source, target, control)
            except ConfigurationError:
                self.control_url = None  # no PostgreSQL side: no control plane, phase off
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        """Forget connections and threads (at start, and in a forked child, whose copies of the
        parent's sockets must not be used or closed: they are the parent's)."""
        self._pid = os.getpid()
        self._source: QueueBackend | None = None
        self._target: QueueBackend | None = None
        self._membership: Membership | None = None
        self._probe_at = 0.0
        self._keys: tuple[str, str] | None = None
        self._shared = False
        self._marker_at = 0.0  # when to read the source's cut-over marker again
        self._refused: ConfigurationError | None = None  # another control plane than the marker's
        self._marked: marker.CutoverMarker | None = None

    @classmethod
    def from_env(cls, registry: TaskRegistry, settings: Settings | None = None) -> Router:
        """Build from ``CUTOVER_SOURCE``, ``CUTOVER_TARGET``, ``CUTOVER_CONTROL`` and
        ``CUTOVER_SCHEMA`` (read by :meth:`Settings.from_env`, unless ``settings`` are given;
        a malformed variable this Router does not use does not stop it)."""
        settings = Settings.from_env() if settings is None else settings
        if not settings.source:
            raise ConfigurationError("CUTOVER_SOURCE is not set (the URL of the backend the "
                                     "application uses today)")
        router = cls(registry, source=settings.source, target=settings.target or None,
                     control=settings.control or None, schema=settings.schema)
        router.pooling = settings.control_pooling
        return router

    # -- backends and the phase -------------------------------------------------------------
    def _forked(self) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._reset()

    @property
    def source(self) -> QueueBackend:
        self._forked()
        if self._source is None:
            with self._lock:
                if self._source is None:
                    self._source = adapters.open_backend(self.source_url)
        return self._source

    @property
    def target(self) -> QueueBackend:
        self._forked()
        if self.target_url is None:
            raise ConfigurationError("the phase writes the target, but the router has none: give "
                                     "target= (CUTOVER_TARGET)")
        if self._target is None:
            with self._lock:
                if self._target is None:
                    self._target = adapters.open_backend(self.target_url)
        return self._target

    def _member(self) -> Membership | None:
        """The fleet membership, once a control plane exists (looked for every ``refresh``
        seconds until then: phase off meanwhile)."""
        self._forked()
        member = self._membership
        if member is not None or self.control_url is None:
            return member
        if time.monotonic() < self._probe_at:
            if self._refused is not None:
                raise self._refused
            return None
        with self._lock:
            if self._membership is None and time.monotonic() >= self._probe_at:
                self._refused = None
                plane = ControlPlane(self.control_url, self.schema, pooling=self.pooling)
                try:
                    absent = plane.schema_version() is None
                    if not absent:
                        # Not the control plane the source's marker names (a leftover
                        # schema, another database): refused, whatever phase it holds.
                        marker.check_control(self.source, plane, "refusing to enqueue")
                except ConfigurationError as exc:
                    plane.close()  # asked again in ``refresh`` seconds
                    self._refused = exc
                    self._probe_at = time.monotonic() + self.refresh
                    raise
                except BaseException:
                    plane.close()  # unreachable: refuse (the phase is unknown), ask again next call
                    raise
                if absent:  # no cut-over started: off; look again in ``refresh`` seconds
                    plane.close()
                    self._probe_at = time.monotonic() + self.refresh
                    return None
                self._membership = Membership(plane, refresh=self.refresh,
                                              heartbeat=self.heartbeat,
                                              stale_after=self.stale_after,
                                              metrics=self.metrics).start()
            return self._membership

    @property
    def phase(self) -> Phase:
        """The phase this router writes by now."""
        member = self._member()
        return Phase.OFF if member is None else member.watcher.current()[0]

    def _ledger_keys(self, plane: ControlPlane) -> tuple[str, str]:
        if self._keys is None:
            assert self.target_url is not None
            self._keys = (self.source.identity().key, self.target.identity().key)
            self._shared = self._in_plane_database(plane)
        return self._keys

    def _in_plane_database(self, plane: ControlPlane) -> bool:
        """Whether the target's connections reach the control plane's database (they see this
        producer's fleet row), however either URL is spelled (``localhost`` or ``127.0.0.1``,
        options, ``postgres://``): the ledger row then shares the job's transaction."""
        target, member = self.target, self._membership
        if member is None or not isinstance(target, TransactionalWork):
            return False
        found: list[bool] = []
        try:
            target.run_tx(lambda conn: found.append(plane.member_here(member.member, conn)))
        except CutoverError:
            return False
        return bool(found and found[0])

    # -- enqueueing ------------------------------------------------------------------------
    def enqueue(self, task: str | Callable[..., Any], *args: Any, job_key: str | None = None,
                queue: str | None = None, run_at: dt.datetime | None = None,
                priority: int | None = None, connection: Any = None, **kwargs: Any) -> str:
        """Enqueue one job; return its cutover id (the live job's id when ``job_key`` is held).

        ``connection``: a psycopg connection of the caller's, to the target's PostgreSQL
        database (or the source's, in ``off``): the job and its ledger row are written in its
        transaction and commit or roll back with the caller's data. Refused (exit 2) when the
        phase writes a backend that cannot join it (Redis), and in ``shadow``/``live``, whose
        second write (the source) could not be taken back if the caller rolled back.
        """
        record = self.registry.make_record(task, args, kwargs, job_key=job_key, queue=queue,
                                           run_at=run_at, priority=priority)
        return self._route([record], connection)[0]

    def enqueue_many(self, calls: Iterable[Call], *, connection: Any = None) -> list[str]:
        """Enqueue many jobs in one batch (one transaction on PostgreSQL, one pipeline on
        Redis, per side the phase writes); return each call's cutover id, in order.

        Each call follows :meth:`enqueue`'s rules: a ``job_key`` held by a live job (or by an
        earlier call of the same batch) enqueues nothing and returns that job's id. Every
        call is checked before anything is sent, so an argument that cannot be carried
        enqueues none of them.
        """
        records = [self.registry.make_record(c.task, c.args, c.kwargs, job_key=c.job_key,
                                             queue=c.queue, run_at=c.run_at,
                                             priority=c.priority) for c in calls]
        return self._route(records, connection) if records else []

    def _route(self, records: list[JobRecord], connection: Any) -> list[str]:
        try:
            return self._route_once(records, connection)
        except PhaseConflictError:
            # connection=: the phase moved between the watcher's read and the hold in the
            # caller's transaction (nothing was written): read it now and route again.
            member = self._membership
            if connection is None or member is None:
                raise
            member.watcher.refresh_now()
            return self._route_once(records, connection)

    def _route_once(self, records: list[JobRecord], connection: Any) -> list[str]:
        member = self._member()
        if member is None:
            self._unmarked()
            return self._one_side(self.source, records, connection, None)
        with member.begin() as state:
            sides = writes(state.phase)
            if sides == (Side.SOURCE,):
                return self._one_side(self.source, records, connection, None)
            if sides == (Side.TARGET,):
                if state.phase is Phase.RAMPDOWN:
                    return self._rampdown(records, connection, member.plane, state.epoch)
                return self._one_side(self.target, records, connection, member.plane,
                                      state.epoch)
            if connection is not None:
                raise ConfigurationError(
                    f"enqueue(connection=...) is refused in {state.phase.value}: the job is "
                    f"written to both backends, and the source's copy could not be taken back "
                    f"if your transaction rolled back. Enqueue without connection= until "
                    f"rampdown, or after your commit")
            return self._dual(records, member.plane)

    def _unmarked(self) -> None:
        """No control plane: refuse when the source carries the cut-over marker (read at most
        every MARKER_RECHECK seconds), unless ``unfenced``."""
        if time.monotonic() >= self._marker_at:
            with self._lock:
                if time.monotonic() >= self._marker_at:
                    found = marker.read(self.source)
                    if found is not None and self.unfenced is not None:
                        log.warning(
                            "writing %s, a store in a staged cut-over (%s -> %s, control plane "
                            "%s schema %s), without its control plane: unfenced=%r",
                            self.source.url, found.source_url, found.target_url,
                            found.control_url, found.schema, self.unfenced,
                            extra={"event": "unfenced_router"})
                    self._marked = found
                    self._marker_at = time.monotonic() + MARKER_RECHECK
        found = self._marked
        if found is not None and self.unfenced is None:
            raise ConfigurationError(
                f"refusing to enqueue: the source {self.source.url} is in a staged cut-over "
                f"({found.source_url} -> {found.target_url}, phase {found.phase or '?'} when "
                f"last marked) and this Router has no control plane ("
                + ("no target given" if self.target_url is None else
                   "no control schema where it looked" if self.control_url else
                   "no PostgreSQL side and no control given")
                + "): it would write the source only, outside the fleet, and after complete "
                f"its jobs would never run. Give it target={found.target_url} "
                f"(CUTOVER_TARGET) and, if the control plane is elsewhere, control="
                f"{found.control_url} (CUTOVER_CONTROL, CUTOVER_SCHEMA={found.schema})")

    def _rampdown(self, records: list[JobRecord], connection: Any,
                  plane: ControlPlane, epoch: int) -> list[str]:
        """rampdown: the target only, except that a job key a live source job still holds
        (it runs there, through the fence) returns that job's id and writes nothing: the same
        answer as in shadow and live. A source that cannot be asked does not stop the enqueue
        (the application no longer writes it): the key is then honoured on the target only,
        and a warning says so."""
        source_keys = [r.job_key for r in records if r.job_key is not None]
        holders: dict[str, str] = {}
        if source_keys:
            try:
                source = self.source
                if isinstance(source, KeyLookup):
                    holders = source.key_holders(source_keys)
            except BackendUnavailableError as exc:
                log.warning("could not ask the source whether a live job holds the job key(s) "
                            "of this enqueue (%s); honoured on the target only", exc)
        fresh = [r for r in records if r.job_key is None or r.job_key not in holders]
        ids = iter(self._one_side(self.target, fresh, connection, plane, epoch)
                   if fresh else [])
        return [holders[r.job_key] if r.job_key is not None and r.job_key in holders
                else next(ids) for r in records]

    def _one_side(self, backend: QueueBackend, records: list[JobRecord], connection: Any,
                  plane: ControlPlane | None, epoch: int = 0) -> list[str]:
        """The phase writes one side: with the ledger row when it is the target."""
        if connection is not None and not isinstance(backend, TransactionalEnqueue):
            raise ConfigurationError(
                f"enqueue(connection=...) needs a PostgreSQL backend, and the phase writes "
                f"{backend.name} ({backend.url}), which cannot join your transaction: a job "
                f"written there at once would run even if you rolled back. Enqueue without "
                f"connection= (after your commit)")
        if plane is None:
            if connection is None:
                return self._send(backend, records)
            assert isinstance(backend, TransactionalEnqueue)
            tx = backend
            return self._timed(backend, len(records), lambda: tx.enqueue_tx(records,
                                                                             conn=connection))
        return self._write_target(records, plane, connection, epoch)

    def _write_target(self, records: list[JobRecord], plane: ControlPlane,
                      connection: Any = None, epoch: int = 0) -> list[str]:
        """The target copies and their ledger rows (``accepted``, one transaction when the
        target is the control plane's database). Returns each record's id on the target."""
        source_key, target_key = self._ledger_keys(plane)
        target = self.target
        if connection is not None and not (self._shared
                                           and isinstance(target, TransactionalEnqueue)):
            raise ConfigurationError(
                f"enqueue(connection=...) needs the control plane in the target's database: "
                f"the job's ledger row must commit or roll back with your transaction, and the "
                f"control plane at {redact(plane.url)} is another database than the target "
                f"({target.url}). Enqueue without connection= (after your commit), or drop "
                f"CUTOVER_CONTROL / control= so the control plane lives in the target's database")

        def ledger(rows: list[JobRecord], conn: Any) -> None:
            plane.record(rows, state=LedgerState.ACCEPTED, source=source_key,
                         target=target_key, run_id="router", conn=conn)
            if connection is not None:
                # In the caller's transaction: no phase change commits before it ends (the
                # transition waits for this share lock), so a rollback out of rampdown cannot
                # miss a job committed after it; a phase that moved since it was read undoes
                # the job and its row (the backend's savepoint) and the call routes again.
                plane.hold_phase(conn, epoch)

        if (self._shared and connection is None and len(records) == 1
                and isinstance(target, StatementEnqueue)):
            # One job: the copy and its ledger row in one statement (one round trip, one
            # commit, as the backend's own enqueue).
            one, stmt = target, plane.record_statement(
                records[0], state=LedgerState.ACCEPTED, source=source_key, target=target_key,
                run_id="router")
            ids = self._timed(target, 1, lambda: [one.enqueue_with(records[0], *stmt)])
        elif self._shared and isinstance(target, TransactionalEnqueue):
            tx = target
            ids = self._timed(target, len(records), lambda: tx.enqueue_tx(
                records, tx_hook=lambda conn: ledger(records, conn), conn=connection))
        else:
            ids = self._send(target, records)
            written = [r for r, i in zip(records, ids, strict=True) if i == r.id]
            try:
                ledger(written, None)
            except BaseException:
                self._take_back(written, plane)
                raise
            return ids
        held = [r.id for r, i in zip(records, ids, strict=True) if i != r.id]
        if held:  # rows written for calls whose key (or id) another job held: not ours
            # In the caller's transaction when given: its rows are not visible elsewhere yet.
            plane.discard(held, source=source_key, target=target_key, conn=connection)
        return ids

    def _dual(self, records: list[JobRecord], plane: ControlPlane) -> list[str]:
        """shadow/live: the target first, then the source; never a silent half."""
        target_ids = self._write_target(records, plane)
        # Calls whose key a live target job holds write nothing on the source either.
        fresh = [r for r, i in zip(records, target_ids, strict=True) if i == r.id]
        faults.point("router-between-writes")
        try:
            source_ids = self._send(self.source, fresh) if fresh else []
        except BaseException:
            self._take_back(fresh, plane)
            raise
        by_id = dict(zip([r.id for r in fresh], source_ids, strict=True))
        # A key a live source job holds: that job is the answer; our target copy goes.
        lost = [r for r in fresh if by_id[r.id] != r.id]
        if lost:
            self._take_back(lost, plane)
        # A key a target job holds: that job may be another call's copy, written a moment ago,
        # that the source is about to refuse (its key held there by an older job) and that call
        # to take back. The source's holder, when there is one, is the job that stays.
        held = {r.job_key for r, i in zip(records, target_ids, strict=True)
                if i != r.id and r.job_key is not None}
        source = self.source
        on_source = (source.key_holders(sorted(held))
                     if held and isinstance(source, KeyLookup) else {})
        return [on_source[r.job_key] if i != r.id and r.job_key in on_source
                else by_id.get(i, i) for r, i in zip(records, target_ids, strict=True)]

    def _take_back(self, records: list[JobRecord], plane: ControlPlane) -> None:
        """Remove target copies the source did not take, with their ledger rows."""
        if not records:
            return
        source_key, target_key = self._ledger_keys(plane)
        ids = [r.id for r in records]
        removed = False
        try:
            if self._shared:
                self.target.remove(ids, tx_hook=lambda conn: plane.discard(
                    ids, source=source_key, target=target_key, conn=conn))
            else:
                self.target.remove(ids)
                removed = True
                plane.discard(ids, source=source_key, target=target_key)
        except Exception:
            if removed:  # a separate control plane failed after the copies went
                log.exception("removed the target copies of %d job(s) the source did not take "
                              "(%s), but not their ledger rows (accepted, with no copy left)",
                              len(ids), ", ".join(ids[:5]))
            else:
                log.exception("could not remove the target copies of %d job(s) the source did "
                              "not take (%s): they stay on the target, in the ledger as "
                              "accepted", len(ids), ", ".join(ids[:5]))

    def _send(self, backend: QueueBackend, records: list[JobRecord]) -> list[str]:
        """One enqueue call to ``backend``, timed and counted in :attr:`metrics`."""
        return self._timed(backend, len(records), lambda: backend.enqueue(records))

    def _timed(self, backend: QueueBackend, n: int, call: Callable[[], list[str]]) -> list[str]:
        started = time.perf_counter()
        try:
            ids = call()
        except BaseException:
            self.metrics.enqueue_failed(backend.name)
            raise
        self.metrics.enqueued(backend.name, time.perf_counter() - started, n)
        return ids

    def close(self) -> None:
        """Leave the fleet, stop the watcher, release connections."""
        with self._lock:
            if self._pid != os.getpid():
                self._reset()
                return
            if self._membership is not None:
                self._membership.close()
            for backend in (self._source, self._target):
                if backend is not None:
                    backend.close()
            self._reset()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
