"""The Router as an application developer uses it, phase by phase: promises a caller relies on
(an id means a job that runs once; a job key means one live job across both backends)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from cutover import Call, Router, adapters
from cutover.backend import KeyLookup, QueueBackend
from cutover.control import ControlPlane, LedgerState
from cutover.errors import BackendUnavailableError, ConfigurationError
from cutover.phases import Phase
from cutover.testing import tasks
from cutover.testing.tasks import registry
from tests.integration.control_db import control_database
from tests.integration.test_router_phases import Pair, move_to


def target_worker_burst(pair: Pair) -> None:
    """``cutover worker --backend procrastinate --burst`` on the pair, as an operator runs it."""
    env = {**os.environ, "CUTOVER_SOURCE": pair.source_url, "CUTOVER_TARGET": pair.target_url,
           "CUTOVER_APP": "cutover.testing.tasks:registry"}
    done = subprocess.run([sys.executable, "-m", "cutover", "worker", "--backend",
                           "procrastinate", "--burst"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_held_key_in_the_callers_transaction_leaves_no_ledger_row(pair: Pair) -> None:
    """rampdown, ``connection=``: a call whose key a live job holds writes nothing, its ledger
    row included once the caller commits (an ``accepted`` row with no job is a loss to verify)."""
    pair.control.init()
    move_to(pair.control, Phase.RAMPDOWN)
    with pair.router() as router:
        first = router.enqueue(tasks.add, 1, 1, job_key="receipt-1")
        with psycopg.connect(pair.target_url) as conn:
            again = router.enqueue(tasks.add, 2, 2, job_key="receipt-1", connection=conn)
            conn.commit()
    assert again == first
    with psycopg.connect(pair.target_url) as conn:
        rows = conn.execute("SELECT cutover_id, state FROM cutover.ledger").fetchall()
    assert rows == [(first, LedgerState.ACCEPTED.value)]


def test_a_database_that_does_not_exist_is_named_in_the_error(cutover_database_url: str) -> None:
    """A typo in the database's name: the error says so (not only that a pool timed out), and
    the password given in the URL is not in it."""
    parts = urlsplit(cutover_database_url)
    url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:s3cret-pw@"
                                           f"{parts.hostname}:{parts.port or 5432}",
                                    path="/no_such_db_apibreak"))
    router = Router(registry, source=url)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as caught:
        router.enqueue(tasks.add, 1, 2)
    router.close()
    message = str(caught.value)
    assert "no_such_db_apibreak" in message and "does not exist" in message, message
    assert "s3cret-pw" not in message
    assert time.monotonic() - started < 30


def test_a_connection_to_another_database_is_refused(pair: Pair) -> None:
    """rampdown, ``connection=`` to a database that is not the target's (here one with the same
    schema: another application's): refused, nothing written there or on the target, rather
    than an id for a job the target's workers never see."""
    pair.control.init()
    move_to(pair.control, Phase.RAMPDOWN)
    with control_database(pair.target_url) as other:
        plane = ControlPlane(other.url)
        plane.init()  # cutover's and procrastinate's schemas there too
        plane.close()
        adapters.open_backend(other.url).close()
        with pair.router() as router, psycopg.connect(other.url) as conn, \
                pytest.raises(ConfigurationError, match="not to this backend"):
            router.enqueue(tasks.add, 1, 2, connection=conn)
        with psycopg.connect(other.url) as conn:
            assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone() == (0,)
        assert list(pair.target.snapshot()) == []
        with pair.router() as router, psycopg.connect(pair.target_url) as conn:
            kept = router.enqueue(tasks.add, 3, 4, connection=conn)  # the right one still joins
            conn.commit()
        assert pair.on(kept) == (False, True)


def test_shadow_leaves_a_job_deferred_by_plain_procrastinate_in_place(pair: Pair) -> None:
    """A job the application deferred on the target with plain procrastinate (no Router: no
    ledger row, no source copy) is not a shadow copy; the dry run must not delete it."""
    import procrastinate

    pair.control.init()
    move_to(pair.control, Phase.SHADOW)
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(
        conninfo=pair.target_url))
    with app.open():
        job_id = app.configure_task("cutover.testing.tasks.add").defer(a=1, b=2)
    target_worker_burst(pair)
    with psycopg.connect(pair.target_url) as conn:
        row = conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s",
                           (job_id,)).fetchone()
    assert row == ("todo",), "the plain procrastinate job was deleted by the shadow dry run"
    move_to(pair.control, Phase.LIVE)  # a worker that executes runs it, once
    target_worker_burst(pair)
    with psycopg.connect(pair.target_url) as conn:
        row = conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s",
                           (job_id,)).fetchone()
    assert row == ("succeeded",)


def test_rampdown_a_key_held_on_the_source_enqueues_nothing_new(pair: Pair) -> None:
    """A job key held by a job still waiting on the source (it runs there, through the fence,
    in rampdown) returns that job's id, as in shadow and live; a second live job with the key
    on the target would run the work twice."""
    pair.control.init()
    with pair.router() as router:
        on_source = router.enqueue(tasks.add, 1, 1, job_key="invoice-7")  # off: source only
    move_to(pair.control, Phase.RAMPDOWN)
    with pair.router() as router:
        again = router.enqueue(tasks.add, 1, 1, job_key="invoice-7")
        batch = router.enqueue_many([Call(tasks.add, (2, 2), job_key="invoice-7"),
                                     Call(tasks.add, (3, 3), job_key="invoice-8"),
                                     Call(tasks.add, (4, 4))])
    assert again == on_source and batch[0] == on_source
    assert sorted(r.job_key or "-" for r in pair.target.snapshot()) == ["-", "invoice-8"]
    assert {batch[1], batch[2]} == {r.id for r in pair.target.snapshot()}
    pair.source.remove([on_source])  # the source's job ran out: the key is free again
    with pair.router() as router:
        fresh = router.enqueue(tasks.add, 5, 5, job_key="invoice-7")
    assert fresh != on_source and pair.on(fresh) == (False, True)


def test_connection_joins_the_callers_transaction_however_the_control_url_is_spelled(
        pair: Pair) -> None:
    """``control=`` naming the target's own database another way (``localhost`` for
    ``127.0.0.1``): the job still rolls back with the caller's transaction, not committed
    on the Router's own connection behind the caller's back."""
    pair.control.init()
    move_to(pair.control, Phase.RAMPDOWN)
    parts = urlsplit(pair.target_url)
    if parts.hostname in ("127.0.0.1", "localhost"):
        other_host = "localhost" if parts.hostname == "127.0.0.1" else "127.0.0.1"
        control = urlunsplit(parts._replace(netloc=parts.netloc.replace(parts.hostname,
                                                                         other_host)))
    else:  # a Unix socket (the embedded server): another spelling by an extra parameter
        query = "&".join(q for q in (parts.query, "connect_timeout=10") if q)
        control = urlunsplit(parts._replace(query=query))
    assert control != pair.target_url
    with pair.router(control=control) as router, psycopg.connect(pair.target_url) as conn:
        dropped = router.enqueue(tasks.add, 3, 4, connection=conn)
        conn.rollback()
        kept = router.enqueue(tasks.add, 5, 6, connection=conn)
        conn.commit()
    assert pair.on(dropped) == (False, False) and pair.ledger(dropped) is None
    assert pair.on(kept) == (False, True) and pair.ledger(kept) is LedgerState.ACCEPTED


def test_connection_is_refused_when_the_control_plane_is_another_database(pair: Pair) -> None:
    """The ledger row cannot join the caller's transaction there: refused, nothing written
    (before: the job was committed on the Router's own connection, whatever the caller did)."""
    with control_database(pair.target_url) as ctl:
        plane = ControlPlane(ctl.url)
        plane.init()
        move_to(plane, Phase.RAMPDOWN)
        plane.close()
        with pair.router(control=ctl.url) as router, psycopg.connect(pair.target_url) as conn:
            with pytest.raises(ConfigurationError, match="control plane"):
                router.enqueue(tasks.add, 1, 2, connection=conn)
            conn.rollback()
            plain = router.enqueue(tasks.add, 3, 4)  # without connection=: the target only
        assert [r.id for r in pair.target.snapshot()] == [plain]


def test_key_holders_names_the_live_job_of_each_key(cutover_backend: QueueBackend) -> None:
    """The lookup the Router makes on the source in rampdown, on every adapter: the enqueue's
    own rule (a live job holds its key; a removed one no longer does)."""
    assert isinstance(cutover_backend, KeyLookup)
    held = registry.make_record(tasks.add, (1, 2), job_key="k-held")
    gone = registry.make_record(tasks.add, (3, 4), job_key="k-gone")
    cutover_backend.enqueue([held, gone])
    cutover_backend.remove([gone.id])
    assert cutover_backend.key_holders(["k-held", "k-gone", "k-none", "k-held"]) == {
        "k-held": held.id}
    assert cutover_backend.key_holders([]) == {}


def test_a_rollback_waits_for_a_job_still_uncommitted_in_the_callers_transaction(
        pair: Pair) -> None:
    """The caller enqueues in rampdown inside its transaction and the operator rolls back to
    shadow before the caller commits. The rollback used to commit at once: its move back to RQ
    could not see the uncommitted job, and once committed the job was a target-only copy the
    shadow dry run removed (the caller held an id for a job that never ran). The enqueue holds
    the phase row (FOR SHARE) in the caller's transaction: the rollback waits for the commit,
    then moves the job back, where it runs."""
    pair.control.init()
    move_to(pair.control, Phase.RAMPDOWN)
    env = {**os.environ, "CUTOVER_SOURCE": pair.source_url, "CUTOVER_TARGET": pair.target_url,
           "CUTOVER_APP": "cutover.testing.tasks:registry"}
    with pair.router() as router, psycopg.connect(pair.target_url) as conn:
        job_id = router.enqueue(tasks.add, 1, 2, connection=conn)
        rollback = subprocess.Popen(
            [sys.executable, "-m", "cutover", "rollback", "--to", "shadow", "--yes", "--force",
             "--why", "test"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        time.sleep(2.0)
        assert rollback.poll() is None, "the rollback did not wait for the open transaction"
        assert pair.control.read_phase().phase is Phase.RAMPDOWN
        conn.commit()
        out, err = rollback.communicate(timeout=120)
        assert rollback.returncode == 0, out + err
        assert "moved 1 waiting job(s) back" in out, out
    assert pair.control.read_phase().phase is Phase.SHADOW
    assert pair.on(job_id) == (True, False)  # back on the source, where it runs
    target_worker_burst(pair)
    assert pair.on(job_id) == (True, False)


def test_a_rollback_refuses_after_waiting_for_a_transaction_that_stays_open(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """An application transaction left open holds the phase: the transition gives up after its
    lock wait, changes nothing, and says why."""
    from cutover.control import phase as phase_family
    from cutover.errors import PreconditionError

    monkeypatch.setattr(phase_family, "TRANSITION_LOCK_WAIT", 0.5)
    pair.control.init()
    move_to(pair.control, Phase.RAMPDOWN)
    with pair.router() as router, psycopg.connect(pair.target_url) as conn:
        router.enqueue(tasks.add, 1, 2, connection=conn)
        with pytest.raises(PreconditionError, match="connection= are still open"):
            move_to(pair.control, Phase.SHADOW)
        assert pair.control.read_phase().phase is Phase.RAMPDOWN
        conn.rollback()
    move_to(pair.control, Phase.SHADOW)  # nothing holds it now
    assert pair.control.read_phase().phase is Phase.SHADOW


def test_concurrent_calls_with_a_key_held_on_the_source_all_get_the_source_job(
        pair: Pair) -> None:
    """live, threads sharing a Router enqueue one job key at once (a webhook delivered twice),
    and an older job holds it on the source: every caller gets that job's id, never the id of a
    target copy another call wrote and then took back (a job that exists nowhere)."""
    pair.control.init()
    with pair.router() as router:
        on_source = router.enqueue(tasks.add, 1, 1, job_key="evt-1")  # off: source only
    move_to(pair.control, Phase.LIVE)
    got: list[str] = []
    with pair.router() as router:
        router.enqueue(tasks.add, 0, 0)  # connections and the phase read before the race
        for _ in range(3):
            barrier = threading.Barrier(6)

            def call(start: threading.Barrier) -> None:
                start.wait()
                got.append(router.enqueue(tasks.add, 2, 2, job_key="evt-1"))
            threads = [threading.Thread(target=call, args=(barrier,)) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert got == [on_source] * 18
    assert [r.job_key for r in pair.target.snapshot() if r.job_key] == []


def test_a_phase_that_moved_since_it_was_read_is_routed_again_in_the_callers_transaction(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """connection=: the phase changed between the Router's read and the hold in the caller's
    transaction: the first write is undone (the backend's savepoint) and the call routes by the
    phase read again. Rolled back rampdown -> shadow, where the routes differ: routed again,
    the call is refused (shadow writes both sides, which connection= cannot), and nothing is
    left, where a call that kept the old route would have committed a target-only job in
    shadow (no source copy: the source's workers never see it)."""
    pair.control.init()
    move_to(pair.control, Phase.RAMPDOWN)
    with pair.router() as router, psycopg.connect(pair.target_url) as conn:
        router.enqueue(tasks.add, 0, 0)  # the membership and its watcher are up
        member = router._membership
        assert member is not None
        stale = member.watcher.state()
        move_to(pair.control, Phase.SHADOW)
        # The Router routes by the watcher's fresh() (the state and its age in one read):
        # the first read is the stale one.
        reads = iter([stale])
        real = member.watcher.fresh
        monkeypatch.setattr(member.watcher, "fresh",
                            lambda *a, **k: next(reads, None) or real(*a, **k))
        holds: list[int] = []
        hold = member.plane.hold_phase
        monkeypatch.setattr(member.plane, "hold_phase",
                            lambda conn, epoch: (holds.append(epoch), hold(conn, epoch)))
        with pytest.raises(ConfigurationError, match="refused in shadow"):
            router.enqueue(tasks.add, 1, 2, connection=conn)
        conn.commit()
    assert holds == [stale.epoch]  # routed by the stale phase first, then refused
    ones = [r for r in pair.target.snapshot() if r.kwargs.get("a") == 1 or r.args[:1] == (1,)]
    assert ones == []
    assert [r for r in pair.source.snapshot() if r.kwargs.get("a") == 1
            or r.args[:1] == (1,)] == []
