"""Who closes a worker's PhaseGate, against a real control plane (PostgreSQL): a worker closes
the gate it built (GateConfig) when run() returns; a gate handed in stays open, the caller's.
Either way the worker's threads close their own control-plane connections as they end.

Connections are counted in pg_stat_activity by an application_name only this test's control
plane uses; threads by the names the gate's threads carry."""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Iterator

import psycopg
import pytest

from cutover import InMemoryBackend
from cutover.control import ControlPlane, MemberKind, Pair
from cutover.fence import GateConfig, PhaseGate
from cutover.phases import ORDER, Phase, Side, decide, transition
from cutover.testing import tasks
from cutover.testing.tasks import registry
from cutover.worker import Worker

GATE_THREADS = ("cutover-fence-heartbeat", "cutover-phase-watcher")


class Plane:
    """A control plane in live, tagged by application_name, and a memory source with jobs."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.app = f"gate-{uuid.uuid4().hex[:8]}"
        sep = "&" if "?" in database_url else "?"
        self.control = ControlPlane(f"{database_url}{sep}application_name={self.app}")
        self.control.init()
        self.source = InMemoryBackend(f"memory://gate-src-{self.app}")
        target = InMemoryBackend(f"memory://gate-tgt-{self.app}")
        pair = Pair(self.source.identity().key, self.source.url, target.identity().key,
                    target.url)
        while (state := self.control.read_phase()).phase is not Phase.LIVE:
            move = transition(state.phase, Phase(ORDER[state.phase.step + 1]))
            self.control.transition(decide(move, {}, force=True, why="test"), why="test",
                                    pair=pair, kind="set")
        self.source.enqueue([registry.make_record(tasks.add, (i, 1)) for i in range(30)])

    def connections(self) -> int:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                               "%s", (self.app,)).fetchone()
        assert row is not None
        return int(row[0])

    def worker(self, gate: PhaseGate | GateConfig) -> Worker:
        # A short lease: the gate's heartbeat thread extends claims and beats (its own
        # connection) several times during the run.
        return Worker(self.source, registry, concurrency=3, burst=True, poll_interval=0.01,
                      heartbeat_interval=0.05, isolation="thread", gate=gate)


@pytest.fixture
def plane(cutover_database_url: str) -> Iterator[Plane]:
    p = Plane(cutover_database_url)
    yield p
    p.control.close()


def gate_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in GATE_THREADS]


def unclosed(caught: list[warnings.WarningMessage]) -> list[str]:
    """Connections the garbage collector found open (psycopg's ResourceWarning)."""
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
            and "deleted while still open" in str(w.message)]


def test_worker_closes_the_gate_it_built_and_every_connection_its_threads_opened(
        plane: Plane) -> None:
    baseline = plane.connections()  # the test thread's own, from init
    assert baseline == 1 and gate_threads() == []
    worker = plane.worker(GateConfig(plane.control, Side.SOURCE, lease=0.6, refresh=0.2))
    assert worker.gate is None  # built when run() starts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        report = worker.run(install_signal_handlers=False)
    assert report.succeeded == 30
    assert worker.gate is not None and worker.gate.member  # it ran through the fence
    assert gate_threads() == []
    assert [t.name for t in threading.enumerate() if t.name.startswith(worker.name)] == []
    assert plane.connections() == baseline
    assert unclosed(caught) == []
    assert plane.control.alive(kind=MemberKind.WORKER) == []  # left the fleet


def test_a_gate_handed_in_stays_the_callers_until_it_closes_it(plane: Plane) -> None:
    baseline = plane.connections()
    gate = PhaseGate(plane.control, plane.source, Side.SOURCE, lease=0.6, refresh=0.2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            report = plane.worker(gate).run(install_signal_handlers=False)
            assert report.succeeded == 30
            # Open: the watcher's connection (the heartbeat's comes and goes with its beats).
            assert sorted(gate_threads()) == sorted(GATE_THREADS)
            assert plane.connections() > baseline
            assert [m.member for m in plane.control.alive(kind=MemberKind.WORKER)] == [gate.member]
            assert gate.state().phase is Phase.LIVE  # still usable by its owner
        assert unclosed(caught) == []  # the worker's threads closed their own connections
    finally:
        gate.close()
    assert gate_threads() == []
    assert plane.connections() == baseline
    assert plane.control.alive(kind=MemberKind.WORKER) == []
