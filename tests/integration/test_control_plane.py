"""The control plane against real PostgreSQL: migrations, transitions, the watcher, the fleet,
the fence's claims."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from cutover.control import (
    Claim,
    ClaimState,
    ControlPlane,
    MemberKind,
    Pair,
    PhaseConflictError,
    PhaseWatcher,
    migrations,
)
from cutover.errors import ConfigurationError, PreconditionError
from cutover.phases import Check, Outcome, Phase, Side, advance, decide, rollback

PAIR = Pair("rq:cluster-a/0", "redis://127.0.0.1:6379/0", "pg:cluster-b/db", "postgresql://h/db")


@pytest.fixture
def plane(cutover_database_url: str) -> Iterator[ControlPlane]:
    control = ControlPlane(cutover_database_url, schema="cutover_ctl")
    control.init()
    yield control
    control.close()


def passed(move: object) -> dict[Check, Outcome]:
    return {c: Outcome(True) for c in move.checks}  # type: ignore[attr-defined]


def go(plane: ControlPlane, to: Phase, **kw: object) -> object:
    current = plane.read_phase().phase
    move = advance(current) if to.step > current.step else rollback(current, to)
    return plane.transition(decide(move, passed(move)), pair=PAIR, **kw)  # type: ignore[arg-type]


# -- migrations ------------------------------------------------------------------------------
def test_control_init_applies_every_migration_once_and_require_accepts_it(
        cutover_database_url: str) -> None:
    control = ControlPlane(cutover_database_url, schema="cutover_fresh")
    assert control.schema_version() is None
    with pytest.raises(ConfigurationError, match="run `cutover init` first"):
        control.require()
    assert control.init() is True
    assert control.schema_version() == migrations.latest() >= 2
    control.require()
    assert control.init() is False  # idempotent: nothing applied twice
    with control.tx("t") as conn:
        rows = conn.execute("SELECT version FROM cutover_fresh.migrations ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == list(range(1, migrations.latest() + 1))
    assert control.read_phase().phase is Phase.OFF
    control.close()


def test_control_unversioned_schema_is_recognised_upgraded_and_stamped(
        cutover_database_url: str) -> None:
    control = ControlPlane(cutover_database_url, schema="cutover_old")
    # The schema an earlier version made: its tables (0001's shape), no migrations table.
    with control.tx("t") as conn:
        conn.execute(control.compose(migrations.all_migrations()[0].text))
        conn.execute("INSERT INTO cutover_old.ledger (cutover_id, task, queue, digest, state, "
                     "source, target) VALUES ('j1', 't', 'q', 'd', 'released', 's', 't')")
    assert control.schema_version() == 0
    with pytest.raises(ConfigurationError, match=r"older than this.*run `cutover init`"):
        control.require()
    assert control.init() is False  # not created: upgraded
    control.require()
    assert control.states(["j1"])["j1"].state == "released"
    assert control.read_phase().epoch == 0
    control.close()


def test_control_schema_older_than_the_identity_tables_gets_them(
        cutover_database_url: str) -> None:
    control = ControlPlane(cutover_database_url, schema="cutover_older")
    with control.tx("t") as conn:  # before stores: a ledger and runs keyed on URL spellings
        conn.execute("CREATE SCHEMA cutover_older; CREATE TABLE cutover_older.ledger ("
                     "cutover_id text PRIMARY KEY, task text NOT NULL, queue text NOT NULL, "
                     "digest text NOT NULL, content text, state text NOT NULL, source text NOT "
                     "NULL, target text NOT NULL, source_id text, target_id text, origin text, "
                     "run_id text, created_at timestamptz NOT NULL DEFAULT now(), updated_at "
                     "timestamptz NOT NULL DEFAULT now()); CREATE TABLE cutover_older.runs ("
                     "run_id text PRIMARY KEY, kind text NOT NULL, source text NOT NULL, target "
                     "text NOT NULL, state text NOT NULL DEFAULT 'running', switch text NOT NULL "
                     "DEFAULT 'run', options jsonb, moved bigint NOT NULL DEFAULT 0, left_behind "
                     "bigint NOT NULL DEFAULT 0, started_at timestamptz NOT NULL DEFAULT now(), "
                     "finished_at timestamptz)")
        conn.execute("INSERT INTO cutover_older.ledger (cutover_id, task, queue, digest, state, "
                     "source, target) VALUES ('j1', 't', 'q', 'd', 'moved', 'rq+redis://x', 'p')")
    control.init()
    control.require()
    with control.tx("t") as conn:
        keys = {r[0] for r in conn.execute("SELECT key FROM cutover_older.legacy_keys")}
    assert keys == {"rq+redis://x", "p"}
    control.close()


def test_control_schema_newer_than_the_code_is_refused(plane: ControlPlane) -> None:
    with plane.tx("t") as conn:
        conn.execute("INSERT INTO cutover_ctl.migrations (version, name) VALUES (%s, 'future')",
                     (migrations.latest() + 1,))
    with pytest.raises(ConfigurationError, match="newer than this queue-cutover"):
        plane.require()
    with pytest.raises(ConfigurationError, match="do not downgrade"):
        plane.init()


# -- transitions -----------------------------------------------------------------------------
def test_control_transition_bumps_epoch_logs_and_fixes_the_pair(plane: ControlPlane) -> None:
    state = go(plane, Phase.SHADOW, who="alice", why="start")
    assert plane.read_phase().phase is Phase.SHADOW
    assert plane.read_phase().epoch == 1 == state.epoch  # type: ignore[attr-defined]
    assert plane.read_phase().pair == PAIR
    entry = plane.history()[0]
    assert (entry.frm, entry.to, entry.epoch, entry.who, entry.kind, entry.forced) == (
        Phase.OFF, Phase.SHADOW, 1, "alice", "advance", False)
    assert entry.pid > 0 and entry.host
    kinds = [e[2] for e in plane.events()]
    assert kinds == ["phase"]
    other = Pair("rq:other/0", "redis://other/0", PAIR.target_key, PAIR.target_url)
    move = advance(Phase.SHADOW)
    with pytest.raises(ConfigurationError, match="not redis://other/0"):
        plane.transition(decide(move, passed(move)), pair=other)
    assert plane.read_phase().epoch == 1


def test_control_transition_refuses_an_undecided_move(plane: ControlPlane) -> None:
    move = advance(Phase.OFF)
    with pytest.raises(PreconditionError, match="workers_alive: nobody"):
        plane.transition(decide(move, {**passed(move),
                                       Check.WORKERS_ALIVE: Outcome(False, "nobody")}))
    assert plane.read_phase().epoch == 0 and plane.history() == []


def test_control_forced_transition_records_who_why_and_refusals(plane: ControlPlane) -> None:
    move = advance(Phase.OFF)
    decision = decide(move, {Check.SCHEMA: Outcome(True)}, force=True, why="drill at 3am")
    plane.transition(decision, who="bob", why="drill at 3am")
    entry = plane.history()[0]
    assert entry.forced and entry.who == "bob" and entry.why == "drill at 3am"
    assert {r["check"] for r in entry.refusals} == {"tasks_resolvable", "workers_alive",
                                                    "no_native_bypass"}


def test_control_two_operators_at_once_one_wins_the_other_sees_the_phase(
        cutover_database_url: str, plane: ControlPlane) -> None:
    planes = [ControlPlane(cutover_database_url, schema="cutover_ctl") for _ in range(4)]
    barrier = threading.Barrier(len(planes))
    results: list[object] = []

    def operate(p: ControlPlane) -> None:
        move = advance(Phase.OFF)
        decision = decide(move, passed(move))
        barrier.wait()
        try:
            results.append(p.transition(decision, pair=PAIR))
        except PhaseConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=operate, args=(p,)) for p in planes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [r for r in results if isinstance(r, PhaseConflictError)]
    assert len(refused) == 3 and all("it is shadow at epoch 1" in str(r) for r in refused)
    assert plane.read_phase().epoch == 1 and len(plane.history()) == 1
    for p in planes:
        p.close()


# -- the watcher -----------------------------------------------------------------------------
def test_control_watcher_hears_a_notification_long_before_its_refresh(
        plane: ControlPlane) -> None:
    with PhaseWatcher(plane, refresh=30) as watcher:
        assert watcher.current() == (Phase.OFF, 0)
        deadline = time.monotonic() + 5
        while not watcher.listening and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        go(plane, Phase.SHADOW)
        assert watcher.wait_for(1, timeout=5)
        assert time.monotonic() - started < 1.0
        assert watcher.current() == (Phase.SHADOW, 1)


def test_control_watcher_converges_within_the_bound_when_its_listener_is_killed(
        plane: ControlPlane) -> None:
    changes: list[int] = []
    with PhaseWatcher(plane, refresh=1.0, on_change=lambda s: changes.append(s.epoch)) as w:
        deadline = time.monotonic() + 5
        while not w.backend_pid and time.monotonic() < deadline:
            time.sleep(0.01)
        with plane.tx("kill") as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (w.backend_pid,)).fetchone()
        go(plane, Phase.SHADOW)  # the notification goes nowhere: nobody listens now
        started = time.monotonic()
        assert w.wait_for(1, timeout=3.5)
        assert time.monotonic() - started <= 2 * w.refresh + 1.0
        assert w.reconnects >= 1
        go(plane, Phase.LIVE)  # and the new listener hears the next one
        assert w.wait_for(2, timeout=3.5)
    assert changes == [1, 2]


def test_control_watcher_polling_only_still_converges(plane: ControlPlane) -> None:
    with PhaseWatcher(plane, refresh=0.3, listen=False) as watcher:
        go(plane, Phase.SHADOW)
        assert watcher.wait_for(1, timeout=2)
        assert not watcher.listening


# -- fleet -----------------------------------------------------------------------------------
def test_control_fleet_registers_heartbeats_acks_and_ages_out(plane: ControlPlane) -> None:
    producer = plane.register(MemberKind.PRODUCER, epoch=0)
    worker = plane.register("worker", side=Side.TARGET, backend="procrastinate", mode="dry")
    alive = {m.member: m for m in plane.alive()}
    assert set(alive) == {producer, worker}
    assert alive[worker].side is Side.TARGET and alive[worker].kind is MemberKind.WORKER
    assert plane.ack_epoch(producer, 3) and plane.ack_epoch(producer, 2)
    assert {m.member: m for m in plane.alive()}[producer].acked_epoch == 3  # never backwards
    assert [m.member for m in plane.alive(kind="worker", side="target")] == [worker]
    time.sleep(1.2)
    assert plane.heartbeat(worker, metrics={"in_flight": 2})
    assert [m.member for m in plane.alive(lease=1.0)] == [worker]
    assert plane.alive(lease=1.0)[0].metrics == {"in_flight": 2}
    plane.deregister(worker)
    assert not plane.heartbeat(worker)  # gone: it must register again
    assert [m.member for m in plane.alive()] == [producer]


# -- claims ----------------------------------------------------------------------------------
def test_control_claims_first_wins_expired_lease_is_taken_over_finish_is_final(
        plane: ControlPlane) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    first = plane.claim("job-1", Side.SOURCE, a, lease=0.5)
    assert first.won and first.state is ClaimState.CLAIMED and first.takeovers == 0
    second = plane.claim("job-1", Side.TARGET, b, lease=0.5)
    assert not second.won and second.member == a and second.side is Side.SOURCE
    assert plane.extend("job-1", a, lease=0.5) and not plane.extend("job-1", b)
    time.sleep(0.7)
    taken = plane.claim("job-1", Side.TARGET, b, lease=30)
    assert taken.won and taken.member == b and taken.takeovers == 1
    assert not plane.finish("job-1", a)  # the old holder learns it lost the claim
    assert plane.finish("job-1", b, ClaimState.DONE)
    late = plane.claim("job-1", Side.SOURCE, a, lease=30)
    assert not late.won and late.finished and late.side is Side.TARGET
    assert plane.claim_of("job-1") == late
    assert plane.claim_of("nope") is None


def test_control_claims_belong_to_one_enqueue_and_count_one_budget(
        plane: ControlPlane) -> None:
    """claim's decision table (migration 0004), copy by copy: S is an RQ worker, T a
    procrastinate one; ``at`` the enqueue stamp both copies of one dual write carry."""
    S, T = uuid.uuid4(), uuid.uuid4()
    at = dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)

    def claim(member: uuid.UUID, side: Side, attempts: int = 0, fresh: bool = False,
              stamp: dt.datetime | None = at, job: str = "j") -> Claim:
        return plane.claim(job, side, member, lease=30, stamp=stamp, attempts=attempts,
                           fresh=fresh)

    # A run on the source, finished: the target's copy of that enqueue is a duplicate.
    first = claim(S, Side.SOURCE, fresh=True)
    assert first.won and (first.generation, first.attempts) == (1, 1)
    assert plane.finish("j", S, ClaimState.FAILED, generation=1)
    twin = claim(T, Side.TARGET, fresh=True)
    assert not twin.won and twin.finished and twin.generation == 1
    # The source's copy recovered after a crash between finish and record: one attempt more,
    # ended_at set (not fresh): a duplicate.
    assert not claim(S, Side.SOURCE, attempts=1).won
    # RQ's requeue of it: no run shown (fresh), the count the worker recorded: runs, gen 2.
    requeued = claim(S, Side.SOURCE, attempts=1, fresh=True)
    assert requeued.won and (requeued.generation, requeued.attempts) == (2, 2)
    assert plane.finish("j", S, ClaimState.DONE, generation=2)
    assert not claim(T, Side.TARGET, fresh=True).won  # the twin still: a duplicate
    # A reused id (a new stamp): a new enqueue, whatever the earlier ones did.
    other = claim(S, Side.SOURCE, stamp=at + dt.timedelta(hours=24), fresh=True)
    assert other.won and (other.generation, other.attempts) == (3, 1)
    newest, of_at = plane.claim_of("j"), plane.claim_of("j", at, any_stamp=False)
    assert newest is not None and of_at is not None
    assert (newest.generation, of_at.generation, of_at.state) == (3, 2, ClaimState.DONE)

    # One budget: a retry releases until its time; nobody claims before, either copy after.
    run1 = claim(S, Side.SOURCE, job="b", fresh=True)
    assert run1.won and run1.attempts == 1
    assert plane.release("b", S, generation=1, delay=0.6)
    early = claim(T, Side.TARGET, job="b", fresh=True)
    assert not early.won and not early.finished
    assert not claim(S, Side.SOURCE, job="b", attempts=1).won  # its own copy neither
    assert not plane.extend("b", S)  # released: no longer the holder's to extend
    time.sleep(0.7)
    run2 = claim(T, Side.TARGET, job="b", fresh=True)
    assert run2.won and run2.attempts == 2 and run2.takeovers == 0  # the count goes on
    assert plane.release("b", T, generation=1, delay=0)
    run3 = claim(S, Side.SOURCE, job="b", attempts=1)
    assert run3.won and run3.attempts == 3
    assert plane.finish("b", S, ClaimState.FAILED, generation=1)
    # The target's copy ran attempt 2 (procrastinate counts 1 on it), the last ran on the
    # source: the target's copy is that enqueue's twin, not a retry, even with attempts.
    assert not claim(T, Side.TARGET, job="b", attempts=1).won
    # Two attempts on the source's copy, the last on the target: same, the other way.
    for own in (0, 1):
        assert claim(S, Side.SOURCE, job="c", attempts=own, fresh=own == 0).won
        assert plane.release("c", S, delay=0)
    last = claim(T, Side.TARGET, job="c", attempts=0, fresh=True)
    assert last.won and last.attempts == 3
    assert plane.finish("c", T, ClaimState.FAILED, generation=last.generation)
    assert not claim(S, Side.SOURCE, job="c", attempts=2).won  # two own attempts: a twin
    # procrastinate's retry_job_by_id on the target (its copy: 0 before, +1 run, +1 retry).
    retried = claim(T, Side.TARGET, job="c", attempts=2)
    assert retried.won and retried.generation == 2
    # A takeover after an expired lease does not charge the dead run to the other copy.
    plane.claim("d", Side.SOURCE, S, lease=0.2, stamp=at, fresh=True)
    time.sleep(0.3)
    taken = claim(T, Side.TARGET, job="d", fresh=True)
    assert taken.won and taken.takeovers == 1 and taken.attempts == 1


def test_control_claims_written_before_0004_keep_the_old_rule(plane: ControlPlane) -> None:
    with plane.tx("t") as conn:
        conn.execute("INSERT INTO cutover_ctl.claims (cutover_id, side, member, lease_until, "
                     "state, finished_at, legacy) VALUES ('old', 'source', gen_random_uuid(), "
                     "now(), 'done', now(), true)")
    stamp = dt.datetime.now(dt.UTC)
    for side, fresh in ((Side.TARGET, True), (Side.SOURCE, True), (Side.SOURCE, False)):
        got = plane.claim("old", side, uuid.uuid4(), stamp=stamp, attempts=5, fresh=fresh)
        assert not got.won and got.finished


def test_control_claim_functions_probe_the_primary_key(plane: ControlPlane) -> None:
    with plane.tx("t") as conn:
        conn.execute("INSERT INTO cutover_ctl.claims (cutover_id, side, member, lease_until, "
                     "state) SELECT 'j' || g, 'source', gen_random_uuid(), now(), 'claimed' "
                     "FROM generate_series(1, 20000) g")
    member = uuid.uuid4()
    scans = ("SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables "
             "WHERE relid = 'cutover_ctl.claims'::regclass")
    with plane.tx("t") as conn:  # the table has no statistics yet: the worst case for a plan
        before = conn.execute(scans).fetchone()
        new = {"stamp": None, "attempts": 0, "fresh": True}
        for verb in (plane.query("claim"), plane.query("claim_extend")):
            conn.execute(verb, {"id": "j77", "side": "target", "member": member, "lease": 5.0,
                                **new})
        conn.execute(plane.query("claim_finish"), {"id": "j77", "member": member,
                                                   "state": "done", "generation": None})
        conn.execute(plane.query("claim"), {"id": "fresh", "side": "target", "member": member,
                                            "lease": 5.0, **new})
        after = conn.execute(scans).fetchone()
    assert before is not None and after is not None
    assert after[0] == before[0]  # not one sequential scan
    # Probes of the primary key: claim reads the id's rows (one scan) and writes the one it
    # picked (one probe); extend and finish one each; a new id's claim reads (finds none) and
    # inserts (ON CONFLICT's probe).
    assert after[1] - before[1] == 6


def test_control_shadow_rate_counts_the_latest_verdict(plane: ControlPlane) -> None:
    plane.record_shadow("a", True)
    plane.record_shadow("b", False, "digest differs")
    plane.record_shadow("b", True)
    rate = plane.shadow_rate()
    assert (rate.jobs, rate.matched, rate.rate) == (2, 2, 1.0)
    plane.record_shadow("c", False, "unknown task")
    assert plane.shadow_mismatches() == [("c", "unknown task")]


def test_control_phase_row_refuses_an_unknown_phase(plane: ControlPlane) -> None:
    with pytest.raises(psycopg.errors.CheckViolation), psycopg.connect(plane.url) as conn:
        conn.execute("UPDATE cutover_ctl.phase SET phase = 'bogus'")
