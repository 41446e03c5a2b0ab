"""A cutover worker that cannot read the phase stops rather than act on an old one: at ``off``
(epoch 0) it runs jobs without the fence, which is safe only while the other side runs none."""

from __future__ import annotations

import threading
import time

import pytest

from cutover import adapters
from cutover.control import ControlPlane, MemberKind
from cutover.errors import ConfigurationError, PhaseUnknownError
from cutover.fence import PhaseGate
from cutover.phases import Side
from cutover.testing import tasks
from cutover.testing.tasks import registry
from cutover.worker import Worker
from tests.integration.control_db import control_database


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_worker_that_cannot_read_the_phase_stops(cutover_redis_url: str,
                                                   cutover_database_url: str,
                                                   concurrency: int) -> None:
    with control_database(cutover_database_url) as ctl:
        plane = ControlPlane(ctl.url)
        plane.init()
        source = adapters.open_backend(cutover_redis_url)
        gate = PhaseGate(ControlPlane(ctl.url), source, Side.SOURCE, refresh=0.2,
                         stale_after=1.5)
        worker = Worker(source, registry, concurrency=concurrency, burst=False,
                        isolation="thread",
                        poll_interval=0.05, gate=gate)
        raised: list[BaseException] = []

        def run() -> None:
            try:
                worker.run(install_signal_handlers=False)
            except BaseException as exc:
                raised.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        try:
            job = source.enqueue([registry.make_record(tasks.add, (1, 2))])[0]
            deadline = time.monotonic() + 10
            while source.get(job) is not None and source.get(job).state.live:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the worker ran nothing"
                time.sleep(0.05)
            assert {m.side for m in plane.alive(kind=MemberKind.WORKER)} == {Side.SOURCE}
            plane.close()
            ctl.cut()
            cut = time.monotonic()
            thread.join(1.5 + 2 * 0.2 + 5.0)
            assert not thread.is_alive(), "the worker ran on by a phase it could not read"
            assert time.monotonic() - cut >= 1.5 - 0.2 - 0.1
            assert len(raised) == 1 and isinstance(raised[0], PhaseUnknownError), raised
            assert "could not be read" in str(raised[0]) and "stops" in str(raised[0])
        finally:
            worker.stop()
            thread.join(10)
            gate.close()
            ctl.restore()
            source.close()


def test_a_stale_bound_the_watcher_cannot_meet_is_refused(cutover_redis_url: str,
                                                          cutover_database_url: str) -> None:
    plane = ControlPlane(cutover_database_url)
    plane.init()
    source = adapters.open_backend(cutover_redis_url)
    try:
        with pytest.raises(ConfigurationError, match="stale_after"):
            PhaseGate(plane, source, Side.SOURCE, refresh=2.0, stale_after=3.0)
    finally:
        source.close()
        plane.close()
