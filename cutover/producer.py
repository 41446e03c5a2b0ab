"""A Router's membership of the fleet: its phase watcher, its registration as a producer, the
heartbeat, and the acknowledgement of each epoch once the enqueues begun under older epochs
have finished (what ``cutover phase advance`` waits for: PRODUCERS_ACKNOWLEDGED).

Every enqueue runs inside :meth:`Membership.begin`, which reads the phase (a lock and two
attribute reads: the watcher keeps it fresh) and counts the call as in flight under that epoch.
The reading and the counting happen under one lock, so the ack thread, which reads the new epoch
first and then looks for older calls under that lock, can never ack while a call routed by the
old phase is still writing.

A Router never routes by a phase it cannot vouch for: when the phase was last read more than
``stale_after`` seconds ago (the control plane unreachable, the watcher's connection hung), an
enqueue is refused with :class:`~cutover.errors.PhaseUnknownError` instead of being sent where an
old phase said. The bound is below the fleet's liveness lease (:data:`cutover.control.fleet.LEASE`):
by the time ``phase advance`` counts a silent producer as gone, that producer has already stopped
routing by the phase it last knew, so it cannot strand a job on a side whose workers went idle.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

from cutover import fleet_metrics
from cutover.control import ControlPlane, MemberKind, PhaseState, PhaseWatcher
from cutover.control.fleet import HEARTBEAT, LEASE
from cutover.control.watcher import REFRESH, STALE_AFTER, check_bounds
from cutover.errors import CutoverError, PhaseUnknownError
from cutover.metrics import METRICS, Metrics

log = logging.getLogger("cutover.producer")
assert STALE_AFTER < LEASE


class Membership:
    """One Router's watcher, fleet registration and ack thread (thread-safe). Each heartbeat
    carries ``metrics``' snapshot (the Router's enqueue counters and latency: what ``cutover
    status`` merges over the fleet)."""

    def __init__(self, plane: ControlPlane, *, refresh: float = REFRESH,
                 heartbeat: float = HEARTBEAT, stale_after: float = STALE_AFTER,
                 metrics: Metrics | None = None) -> None:
        check_bounds(refresh, stale_after)
        self.plane = plane
        self.metrics = METRICS if metrics is None else metrics
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.watcher = PhaseWatcher(plane, refresh, on_change=self._changed)
        self._cond = threading.Condition()
        self._inflight: Counter[int] = Counter()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.member = uuid.uuid4()
        #: The last epoch written to the fleet as acknowledged.
        self.acked = -1
        #: Enqueues refused because the phase was too old to route by.
        self.refused = 0

    def start(self) -> Membership:
        """Read the phase, register as a producer acknowledging it (nothing is in flight yet),
        start the heartbeat/ack thread. Errors propagate (the plane is unreachable)."""
        self.watcher.start()
        state = self.watcher.state()
        self.plane.register(MemberKind.PRODUCER, mode=state.phase.value, epoch=state.epoch,
                            member=self.member)
        self.acked = state.epoch
        self._thread = threading.Thread(target=self._run, name="cutover-producer", daemon=True)
        self._thread.start()
        return self

    @contextlib.contextmanager
    def begin(self) -> Iterator[PhaseState]:
        """The phase to route one call by; the call counts as in flight under its epoch.
        Refused (:class:`PhaseUnknownError`) when the phase could not be read for
        ``stale_after`` seconds."""
        with self._cond:
            try:
                state = self.watcher.fresh(self.stale_after, "the job is not enqueued rather "
                                           "than sent where an old phase said; it goes through "
                                           "again once the phase is read")
            except PhaseUnknownError:
                self.refused += 1
                raise
            self._inflight[state.epoch] += 1
        try:
            yield state
        finally:
            with self._cond:
                self._inflight[state.epoch] -= 1
                if self._inflight[state.epoch] <= 0:
                    del self._inflight[state.epoch]
                    self._wake.set()

    def busy_below(self, epoch: int) -> int:
        """How many calls routed by an epoch older than ``epoch`` are still writing."""
        with self._cond:
            return sum(n for e, n in self._inflight.items() if e < epoch)

    def close(self) -> None:
        """Stop the thread, leave the fleet (best effort), stop the watcher."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(CutoverError):
            self.plane.deregister(self.member)
        self.watcher.close()
        self.plane.close()

    # -- the thread ------------------------------------------------------------------------
    def _changed(self, state: PhaseState) -> None:
        self._wake.set()

    def _run(self) -> None:
        next_beat = time.monotonic() + self.heartbeat
        while not self._stop.is_set():
            try:
                state = self.watcher.state()
                if state.epoch > self.acked and not self.busy_below(state.epoch):
                    if not self.plane.ack_epoch(self.member, state.epoch):
                        self._register(state, state.epoch)
                    self.acked = state.epoch
                    log.info("producer %s acknowledged epoch %d (%s)", self.member,
                             state.epoch, state.phase.value)
                if time.monotonic() >= next_beat:
                    if not fleet_metrics.publish(self.plane, self.member, self.metrics,
                                                 mode=state.phase.value,
                                                 phase=(state.phase.value, state.epoch)):
                        self._register(state, self.acked)
                    next_beat = time.monotonic() + self.heartbeat
            except CutoverError as exc:  # the plane is down: enqueues refuse past stale_after
                log.warning("producer heartbeat/ack failed: %s", exc)
            except Exception:  # never let the thread die: acks and heartbeats would stop
                log.exception("producer heartbeat/ack failed")
            pending = self.watcher.state().epoch > self.acked
            self._wake.wait(0.05 if pending else min(self.heartbeat, self.watcher.refresh))
            self._wake.clear()

    def _register(self, state: PhaseState, epoch: int) -> None:
        """Pruned or deregistered under us: register again, at ``epoch``."""
        self.plane.register(MemberKind.PRODUCER, mode=state.phase.value, epoch=max(epoch, 0),
                            member=self.member)
