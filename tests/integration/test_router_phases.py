"""cutover.Router obeying the phase: an RQ source, a PostgreSQL target that also holds the control
plane (the ledger row shares the target's transaction)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from cutover import Call, Router, adapters, phases
from cutover.backend import QueueBackend
from cutover.control import ControlPlane, LedgerState, MemberKind
from cutover.errors import BackendError, ConfigurationError, PhaseUnknownError
from cutover.phases import Phase
from cutover.testing import tasks
from cutover.testing.tasks import registry
from tests.integration.control_db import control_database


def move_to(control: ControlPlane, to: Phase) -> int:
    """Force the phase to ``to`` one step at a time; returns the new epoch."""
    while True:
        current = control.read_phase().phase
        if current is to:
            return control.read_phase().epoch
        move = (phases.advance(current) if to.step > current.step
                else phases.rollback(current, to))
        control.transition(phases.decide(move, {}, force=True, why="router test"), why="test")


class Pair:
    def __init__(self, source_url: str, target_url: str) -> None:
        self.source_url, self.target_url = source_url, target_url
        self.control = ControlPlane(target_url)
        self.source: QueueBackend = adapters.open_backend(source_url)
        self.target: QueueBackend = adapters.open_backend(target_url)

    def router(self, **kw: Any) -> Router:
        kw.setdefault("refresh", 0.2)
        kw.setdefault("heartbeat", 0.2)
        return Router(registry, source=self.source_url, target=self.target_url, **kw)

    def on(self, job_id: str) -> tuple[bool, bool]:
        return self.source.get(job_id) is not None, self.target.get(job_id) is not None

    def ledger(self, job_id: str) -> LedgerState | None:
        entry = self.control.states([job_id]).get(job_id)
        return entry.state if entry else None


def test_without_a_control_plane_the_router_writes_the_source_only(pair: Pair) -> None:
    with pair.router() as router:
        job = router.enqueue(tasks.add, 1, 2)
        assert router.phase is Phase.OFF
    assert pair.on(job) == (True, False)


@pytest.mark.parametrize(("phase", "where"), [
    (Phase.OFF, (True, False)), (Phase.SHADOW, (True, True)), (Phase.LIVE, (True, True)),
    (Phase.RAMPDOWN, (False, True)), (Phase.COMPLETE, (False, True))])
def test_each_phase_writes_where_phases_writes_says(pair: Pair, phase: Phase,
                                                    where: tuple[bool, bool]) -> None:
    pair.control.init()
    move_to(pair.control, phase)
    with pair.router() as router:
        one = router.enqueue(tasks.add, 1, 2)
        many = router.enqueue_many([Call(tasks.add, (i, i)) for i in range(3)])
    for job in (one, *many):
        assert pair.on(job) == where
        assert pair.ledger(job) == (LedgerState.ACCEPTED if where[1] else None)
    if where == (True, True):  # the same job on both sides, under one id
        s, t = pair.source.get(one), pair.target.get(one)
        assert s is not None and t is not None and s.digest() == t.digest()


def test_a_failed_source_write_takes_the_target_copy_back_and_raises(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    pair.control.init()
    move_to(pair.control, Phase.LIVE)
    with pair.router() as router:
        def broken(records: Any) -> list[str]:
            raise BackendError("redis went away")
        monkeypatch.setattr(router.source, "enqueue", broken)
        before = pair.target.counts()
        with pytest.raises(BackendError):
            router.enqueue(tasks.add, 1, 2, job_key="half")
        with pytest.raises(BackendError):
            router.enqueue_many([Call(tasks.add, (i, i)) for i in range(3)])
    assert pair.target.counts() == before  # nothing left behind on the target
    assert pair.control.summary() == []      # nor in the ledger


def test_a_live_key_on_either_side_returns_that_job_and_writes_nothing_new(pair: Pair) -> None:
    pair.control.init()
    with pair.router() as router:
        on_source = router.enqueue(tasks.add, 1, 1, job_key="k-source")  # off: source only
    move_to(pair.control, Phase.RAMPDOWN)
    with pair.router() as router:
        on_target = router.enqueue(tasks.add, 2, 2, job_key="k-target")  # target only
    move_to(pair.control, Phase.LIVE)
    with pair.router() as router:
        assert router.enqueue(tasks.add, 9, 9, job_key="k-source") == on_source
        assert router.enqueue(tasks.add, 9, 9, job_key="k-target") == on_target
        batch = router.enqueue_many([Call(tasks.add, (3, 3), job_key="k-source"),
                                     Call(tasks.add, (4, 4), job_key="k-new"),
                                     Call(tasks.add, (5, 5), job_key="k-new")])
    assert batch[0] == on_source and batch[1] == batch[2]
    assert pair.on(on_source) == (True, False) and pair.on(on_target) == (False, True)
    assert pair.on(batch[1]) == (True, True)
    assert sorted(r.job_key or "" for r in pair.source.snapshot()) == ["k-new", "k-source"]
    assert sorted(r.job_key or "" for r in pair.target.snapshot()) == ["k-new", "k-target"]
    assert sum(row["jobs"] for row in pair.control.summary()) == 2  # k-target, k-new


def test_connection_commits_and_rolls_back_with_the_callers_transaction(pair: Pair) -> None:
    pair.control.init()
    move_to(pair.control, Phase.COMPLETE)
    with pair.router() as router, psycopg.connect(pair.target_url) as conn:
        kept = router.enqueue(tasks.add, 1, 2, connection=conn)
        conn.commit()
        dropped = router.enqueue(tasks.add, 3, 4, connection=conn)
        assert pair.on(dropped) == (False, False)  # not visible before the caller commits
        conn.rollback()
    assert pair.on(kept) == (False, True) and pair.ledger(kept) is LedgerState.ACCEPTED
    assert pair.on(dropped) == (False, False) and pair.ledger(dropped) is None


@pytest.mark.parametrize("phase", [Phase.OFF, Phase.SHADOW, Phase.LIVE])
def test_connection_is_refused_where_a_write_cannot_join_it(pair: Pair, phase: Phase) -> None:
    pair.control.init()
    move_to(pair.control, phase)
    with pair.router() as router, psycopg.connect(pair.target_url) as conn, \
            pytest.raises(ConfigurationError, match="connection="):
        router.enqueue(tasks.add, 1, 2, connection=conn)
    assert list(pair.source.snapshot()) == [] and list(pair.target.snapshot()) == []


def _producer(control: ControlPlane) -> Any:
    found = control.alive(kind=MemberKind.PRODUCER)
    assert len(found) == 1
    return found[0]


def test_the_ack_waits_for_enqueues_of_the_old_epoch(pair: Pair,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pair.control.init()
    with pair.router() as router:
        router.enqueue(tasks.add, 0, 0)
        assert _producer(pair.control).pid == os.getpid()
        release, entered = threading.Event(), threading.Event()
        real = router.source.enqueue

        def slow(records: Any) -> list[str]:
            entered.set()
            release.wait(10)
            return real(records)
        monkeypatch.setattr(router.source, "enqueue", slow)
        blocked = threading.Thread(target=router.enqueue, args=(tasks.add, 1, 1))
        blocked.start()
        assert entered.wait(5)
        epoch = move_to(pair.control, Phase.SHADOW)
        time.sleep(1.0)  # several refresh periods: the watcher has seen the new epoch
        assert router.phase is Phase.SHADOW
        assert _producer(pair.control).acked_epoch < epoch
        release.set()
        blocked.join(5)
        deadline = time.monotonic() + 5
        while _producer(pair.control).acked_epoch < epoch and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _producer(pair.control).acked_epoch == epoch
    assert pair.control.alive(kind=MemberKind.PRODUCER) == []  # close() left the fleet


def test_a_lost_notification_misroutes_no_longer_than_the_re_read_bound(pair: Pair) -> None:
    pair.control.init()
    with pair.router(refresh=0.5) as router:
        router.enqueue(tasks.add, 0, 0)
        member = router._membership
        assert member is not None
        # The watcher's thread opens its LISTEN connection after start() returns: a single
        # enqueue (one round trip) can be done before it is up.
        deadline = time.monotonic() + 5
        while not member.watcher.backend_pid:
            assert time.monotonic() < deadline, "the watcher never connected"
            time.sleep(0.01)
        with psycopg.connect(pair.target_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [member.watcher.backend_pid])
        move_to(pair.control, Phase.SHADOW)
        changed = time.monotonic()
        while router.phase is not Phase.SHADOW:
            assert time.monotonic() - changed < 2 * 0.5 + 1.0, "still routing by the old phase"
            time.sleep(0.02)
        job = router.enqueue(tasks.add, 1, 1)
    assert pair.on(job) == (True, True)


KILLED = """
import sys
from cutover import Router
from cutover.testing.tasks import registry, add
router = Router(registry, source=sys.argv[1], target=sys.argv[2], refresh=0.2)
router.enqueue(add, 1, 2, job_key="killed-between")
print("not reached", flush=True)
"""


def test_kill_9_between_the_two_writes_leaves_a_recorded_target_only_copy(pair: Pair) -> None:
    pair.control.init()
    move_to(pair.control, Phase.LIVE)
    env = dict(os.environ, CUTOVER_FAULT="router-between-writes:1")
    done = subprocess.run([sys.executable, "-c", KILLED, pair.source_url, pair.target_url],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    assert "not reached" not in done.stdout
    left = list(pair.target.snapshot())
    assert len(left) == 1 and left[0].job_key == "killed-between"
    assert pair.on(left[0].id) == (False, True)
    assert pair.ledger(left[0].id) is LedgerState.ACCEPTED
    # A retry by the application finds the key held on the target: one job, no second copy.
    with pair.router() as router:
        assert router.enqueue(tasks.add, 1, 2, job_key="killed-between") == left[0].id
    assert pair.on(left[0].id) == (False, True)


def test_a_router_used_after_fork_reopens_its_connections(pair: Pair) -> None:
    pair.control.init()
    move_to(pair.control, Phase.LIVE)
    with pair.router() as router:
        router.enqueue(tasks.add, 0, 0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a worker process inheriting the web process's router
            code = 1
            try:
                job = router.enqueue(tasks.add, 7, 7)
                os.write(write, job.encode())
                router.close()
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        child_job = os.read(read, 200).decode()
        os.close(read)
        assert os.waitstatus_to_exitcode(status) == 0
        after = router.enqueue(tasks.add, 8, 8)  # the parent's connections still work
    assert pair.on(child_job) == (True, True) and pair.on(after) == (True, True)


def test_a_router_that_cannot_read_the_phase_refuses_rather_than_misroute(
        pair: Pair) -> None:
    """The control plane (its own database here) becomes unreachable while the phase is ``off``
    (a cut-over prepared, writes on the source only, none on the plane): the router goes on by
    the phase it read for at most ``stale_after`` seconds, then refuses every enqueue with
    PhaseUnknownError (nothing written anywhere) until the phase can be read again: the phase
    may have moved on meanwhile, to one whose workers would never run a source-only job."""
    with control_database(pair.target_url) as ctl:
        plane = ControlPlane(ctl.url)
        plane.init()
        plane.close()
        with pair.router(control=ctl.url, refresh=0.2, stale_after=2.0) as router:
            assert pair.on(router.enqueue(tasks.add, 1, 1)) == (True, False)
            assert router._membership is not None  # it reads the plane's phase
            ctl.cut()
            cut = time.monotonic()
            refused = None
            while refused is None:
                assert time.monotonic() - cut < 2.0 + 2 * 0.2 + 3.0, "still routing blind"
                try:
                    router.enqueue(tasks.add, 2, 2)
                except PhaseUnknownError as exc:
                    refused = exc
                time.sleep(0.05)
            assert time.monotonic() - cut >= 2.0 - 2 * 0.2 - 0.1  # not before the bound
            assert "could not be read" in str(refused) and ctl.name in str(refused)
            written = pair.source.counts()
            with pytest.raises(PhaseUnknownError):  # refused calls write nothing
                router.enqueue_many([Call(tasks.add, (3, 3))])
            assert pair.source.counts() == written
            ctl.restore()
            back = time.monotonic()
            while True:  # the phase is read again: enqueues go through, where off says
                try:
                    job = router.enqueue(tasks.add, 4, 4)
                    break
                except PhaseUnknownError:
                    assert time.monotonic() - back < 10, "never routed again"
                    time.sleep(0.1)
            assert pair.on(job) == (True, False)


def test_a_stale_bound_the_watcher_cannot_meet_is_refused(pair: Pair) -> None:
    with pytest.raises(ConfigurationError, match="stale_after"):
        pair.router(refresh=2.0, stale_after=4.0)
