"""PhaseWatcher: the phase and epoch, kept fresh for producers and workers at the cost of a
lock and two attribute reads per question.

A daemon thread LISTENs on ``cutover_phase`` on a dedicated connection and re-reads the phase row
when a notification arrives, and in any case every ``refresh`` seconds (default 2). A lost
notification, a listener killed by the server, a pooler that does not keep LISTEN (PgBouncer in
transaction mode): each delays a change by at most the refresh interval, never hides it. If the
thread itself falls behind (its connection hangs), the caller re-reads synchronously.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from cutover.control.phase import CHANNEL, Phases, PhaseState
from cutover.control.plane import backend_pid
from cutover.errors import ConfigurationError, CutoverError, PhaseUnknownError
from cutover.phases import Phase

log = logging.getLogger("cutover.control.watcher")
#: How often the phase is re-read without a notification, seconds (the staleness bound).
REFRESH = 2.0
#: Seconds after which a producer or a worker refuses to act on the phase it last read
#: (PhaseUnknownError): below the fleet's liveness lease (15 s), so a member the fleet no longer
#: counts as alive has already stopped acting on an old phase.
STALE_AFTER = 10.0


def check_bounds(refresh: float, stale_after: float) -> None:
    """Refuse a ``stale_after`` the watcher's own re-read (``2 * refresh + 1`` s) cannot meet."""
    if stale_after <= 2 * refresh + 1.0:
        raise ConfigurationError(
            f"stale_after ({stale_after}s) must exceed 2 * refresh + 1 ({2 * refresh + 1.0}s): "
            f"the phase is re-read by then, and a router would refuse enqueues in between")


class PhaseWatcher:
    """The current phase of one control plane, for many threads (thread-safe).

    ``with PhaseWatcher(plane) as w: phase, epoch = w.current()``. ``on_change`` is called (in
    the watcher's thread) with each new state: a Router acknowledges epochs from there.
    """

    def __init__(self, plane: Phases, refresh: float = REFRESH, *, listen: bool | None = None,
                 on_change: Callable[[PhaseState], None] | None = None) -> None:
        if refresh <= 0:
            raise ValueError("refresh must be positive")
        self.plane = plane
        self.refresh = refresh
        self._listen = listen
        self._on_change = on_change
        self._lock = threading.Lock()
        self._sync = threading.Lock()
        self._stop = threading.Event()
        self._state = PhaseState(Phase.OFF, 0)
        self._read_at = 0.0
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        #: How many times the listening connection was lost and made again (for tests, metrics).
        self.reconnects = 0
        self.listening = False
        #: The server backend of the listening connection (0 before it connects).
        self.backend_pid = 0

    # -- reading ---------------------------------------------------------------------------
    def start(self) -> PhaseWatcher:
        """Read the phase now (errors propagate: the caller learns the plane is unreachable)
        and start the thread."""
        if self._thread is not None:
            return self
        if self._listen is None:
            self._listen = not self.plane.pooled()
        self._update(self.plane.read_phase())
        self._thread = threading.Thread(target=self._run, name="cutover-phase-watcher",
                                        daemon=True)
        self._thread.start()
        return self

    def state(self) -> PhaseState:
        """The phase row as last read, re-read here if the thread fell behind the bound."""
        return self._read()[0]

    def fresh(self, stale_after: float, refusal: str) -> PhaseState:
        """:meth:`state`, refused (:class:`PhaseUnknownError`: ``refusal`` says what the
        caller does not do) when it was last read more than ``stale_after`` seconds ago."""
        state, age = self._read()
        if age > stale_after:
            raise PhaseUnknownError(
                f"the cut-over's phase could not be read for {age:.0f}s (the control plane "
                f"{self.plane.redacted_url} is unreachable or slow): {refusal} (the phase last "
                f"read: {state.phase.value}, epoch {state.epoch})")
        return state

    def _read(self) -> tuple[PhaseState, float]:
        """(the phase, seconds since it was read), re-read first if the thread fell behind."""
        with self._lock:
            state, age = self._state, time.monotonic() - self._read_at
        if age > 2 * self.refresh + 1.0 and self._sync.acquire(blocking=False):
            try:  # one caller re-reads for everyone; the others keep the cached value
                state = self.plane.read_phase()
                self._update(state)
                age = 0.0
            except CutoverError as exc:
                log.warning("phase re-read failed (last read %.0fs ago): %s", age, exc)
            finally:
                self._sync.release()
        return state, age

    def refresh_now(self) -> PhaseState:
        """Read the phase now (errors propagate), for a caller that learned it moved on."""
        state = self.plane.read_phase()
        self._update(state)
        return state

    def current(self) -> tuple[Phase, int]:
        """(phase, epoch)."""
        state = self.state()
        return state.phase, state.epoch

    @property
    def age(self) -> float:
        """Seconds since the phase was last read."""
        with self._lock:
            return time.monotonic() - self._read_at

    def wait_for(self, epoch: int, timeout: float) -> bool:
        """Wait until the epoch read is at least ``epoch``; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.state().epoch < epoch:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if self._thread is not None:
            self._thread.join(timeout=self.refresh + 1.0)

    def __enter__(self) -> PhaseWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the thread ------------------------------------------------------------------------
    def _update(self, state: PhaseState) -> None:
        with self._lock:
            changed = state.epoch != self._state.epoch or state.phase != self._state.phase
            self._state, self._read_at = state, time.monotonic()
        if changed and self._on_change is not None:
            try:
                self._on_change(state)
            except Exception:  # a callback's failure must not stop the watcher
                log.exception("phase change callback failed")

    def _run(self) -> None:
        try:
            self._watch()
        finally:  # close() closes it too, but the thread may have reconnected meanwhile
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _watch(self) -> None:
        pid = 0
        while not self._stop.is_set():
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self.plane.connect("listening for phase changes")
                    if self._listen:
                        self._conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = bool(self._listen)
                    pid = self.backend_pid = backend_pid(self._conn)
                    # Read at once on a new connection: notifications were missed while it was
                    # down, and connections cut more often than every ``refresh`` would
                    # otherwise never read the phase (the worker stops when it goes stale).
                    self._update(self.plane.read_phase(self._conn))
                if self.listening:
                    for _ in self._conn.notifies(timeout=self.refresh, stop_after=1):
                        pass
                else:
                    self._stop.wait(self.refresh)
                if self._stop.is_set():
                    break
                now_pid = backend_pid(self._conn)
                if self.listening and now_pid != pid:
                    # A transaction pooler handed us another server backend: our LISTEN is
                    # on a backend we no longer talk to. Poll only from now on.
                    log.warning("the control plane's connection changed server backend (a "
                                "transaction pooler?): polling the phase every %.1fs", self.refresh)
                    self._listen = self.listening = False
                self._update(self.plane.read_phase(self._conn))
            except (psycopg.Error, CutoverError) as exc:
                if self._stop.is_set():
                    break
                log.info("phase listener lost its connection (%s); reconnecting",
                         self.plane.scrub(str(exc)))
                self.reconnects += 1
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                self._conn = None
                self.listening = False
                self._stop.wait(min(self.refresh, 0.2))
