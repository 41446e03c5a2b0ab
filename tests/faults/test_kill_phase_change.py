"""Proof: kill -9 of the process changing the phase (`cutover phase advance`, `cutover rollback`,
each a real subprocess killed by CUTOVER_FAULT at a step boundary): the phase is then the old one
or the new one, never between; the epoch, phase_log and the events agree; re-running the command
naming the goal (`phase set PHASE`, `rollback --to PHASE`) finishes the move (a rollback's move
back resumes its drain); and every job is still in exactly one place, counted by id."""

from __future__ import annotations

import signal

import pytest

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.control import ControlPlane, MemberKind
from cutover.phases import Phase, decide, transition
from cutover.record import JobRecord
from cutover.testing import tasks
from cutover.testing.tasks import registry
from tests.faults.test_drain_faults import assert_one_place
from tests.integration.drain_helpers import invoke, run_cli

pytestmark = [pytest.mark.rq, pytest.mark.pg, pytest.mark.slow]

FORCE = ("--yes", "--force", "--why", "proof")
JOBS = 30


def walk_to(urls: tuple[str, str], phase: Phase) -> ControlPlane:
    control = ControlPlane(urls[1])
    while control.read_phase().phase is not phase:
        result = invoke(*urls, "phase", "advance", *FORCE)
        assert result.exit_code == 0, result.output
    return control


def assert_consistent(control: ControlPlane, old: Phase, new: Phase, old_epoch: int) -> Phase:
    """The phase is old at old_epoch or new at old_epoch + 1; the latest phase_log entry and the
    latest phase event say the same; one log entry per epoch (none half-written)."""
    state = control.read_phase()
    assert (state.phase, state.epoch) in {(old, old_epoch), (new, old_epoch + 1)}, state
    log = control.history(1000)
    assert len(log) == state.epoch, [h.as_dict() for h in log]
    assert (log[0].to, log[0].epoch) == (state.phase, state.epoch)
    phase_events = [d for _, _, kind, d in control.events(1000) if kind == "phase"]
    assert len(phase_events) == state.epoch
    assert (phase_events[0]["to"], phase_events[0]["epoch"]) == (state.phase.value, state.epoch)
    return state.phase


def killed(urls: tuple[str, str], fault: str, *args: str) -> None:
    proc = run_cli(*urls, *args, env={"CUTOVER_FAULT": fault})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)


def ids(backend: QueueBackend) -> set[str]:
    return {r.id for r in backend.snapshot()}


def jobs(backend: QueueBackend) -> list[JobRecord]:
    records = [registry.make_record(tasks.add, (i, 1)) for i in range(JOBS)]
    backend.enqueue(records)
    return records


@pytest.mark.parametrize("rerun", [("set", "live"), ("advance", "--from", "shadow")])
@pytest.mark.parametrize(("fault", "moved"), [("phase_checked:1", False),
                                              ("phase_in_tx:1", False),
                                              ("phase_committed:1", True)])
def test_kill_9_of_phase_advance_then_rerun(urls: tuple[str, str], fault: str,
                                           moved: bool, rerun: tuple[str, ...]) -> None:
    control = walk_to(urls, Phase.SHADOW)
    source = adapters.open_backend(urls[0])
    records = jobs(source)
    killed(urls, fault, "phase", "advance", *FORCE)
    now = assert_consistent(control, Phase.SHADOW, Phase.LIVE, 1)
    assert now is (Phase.LIVE if moved else Phase.SHADOW)
    # the re-run names the goal (set live) or the start (advance --from shadow): it moves if
    # the kill came first, and is a no-op otherwise (a bare `phase advance` would step on to
    # rampdown)
    again = run_cli(*urls, "phase", *rerun, *FORCE)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ("already" in again.stdout) is moved
    assert assert_consistent(control, Phase.LIVE, Phase.LIVE, 2) is Phase.LIVE
    assert control.read_phase().epoch == 2
    assert ids(source) == {r.id for r in records}  # nothing lost, nothing moved
    if rerun[0] == "advance":  # from any other phase, --from refuses and moves nothing
        wrong = run_cli(*urls, "phase", *rerun, *FORCE)
        assert wrong.returncode == 0 and "already" in wrong.stdout  # still live: a re-run
        control.transition(decide(transition(Phase.LIVE, Phase.RAMPDOWN), {}, force=True,
                                  why="test"), why="test", kind="set")
        late = run_cli(*urls, "phase", *rerun, *FORCE)
        assert late.returncode == 2 and "not shadow" in late.stderr, late.stderr
        assert control.read_phase().phase is Phase.RAMPDOWN
    control.close()


#: (fault, phase moved, jobs on the source when it struck): the transition's three points, then
#: the move-back drain's step boundaries (one batch: after the take the source has none yet,
#: after the put it has every job while the target still holds its copies).
ROLLBACK_FAULTS = [("phase_checked:1", False, 0), ("phase_in_tx:1", False, 0),
                   ("phase_committed:1", True, 0), ("after_take:1", True, 0),
                   ("after_intent:1", True, 0), ("after_put:1", True, JOBS),
                   ("after_release:1", True, JOBS)]


@pytest.mark.parametrize(("fault", "moved", "on_source"), ROLLBACK_FAULTS)
def test_kill_9_of_rollback_out_of_rampdown_then_rerun_moves_every_job_back_once(
        urls: tuple[str, str], fault: str, moved: bool, on_source: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTOVER_FLEET_LEASE", "300")  # the registrations outlive the test
    control = walk_to(urls, Phase.RAMPDOWN)
    # a cutover worker alive on each side, acting on rampdown's epoch (3), so the rollback
    # passes its checks unforced
    control.register(MemberKind.WORKER, side="source", backend="rq", epoch=3)
    control.register(MemberKind.WORKER, side="target", backend="procrastinate", epoch=3)
    source, target = adapters.open_backend(urls[0]), adapters.open_backend(urls[1])
    records = jobs(target)  # rampdown: producers wrote the target only
    killed(urls, fault, "rollback", "--yes")
    now = assert_consistent(control, Phase.RAMPDOWN, Phase.LIVE, 3)
    assert now is (Phase.LIVE if moved else Phase.RAMPDOWN)
    assert_one_place(records, source, target, settled=False)
    assert len(ids(source)) == on_source, "the kill did not land where it was meant to"
    if fault == "after_put:1":
        assert len(ids(target)) == JOBS  # put, not yet released: held, so it runs nowhere twice
    again = run_cli(*urls, "rollback", "--to", "live", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    assert ("already" in again.stdout) is moved
    assert "waiting job(s) back to the source" in again.stdout
    assert assert_consistent(control, Phase.LIVE, Phase.LIVE, 4) is Phase.LIVE
    assert ids(source) == {r.id for r in records}, "a job was not moved back"
    assert ids(target) == set(), "a job was left on the target"
    back = {r.id: r for r in source.snapshot()}
    for record in records:
        assert back[record.id].digest() == record.digest()
    # a third run finds nothing left to do and moves nothing twice
    third = run_cli(*urls, "rollback", "--to", "live", "--yes")
    assert third.returncode == 0 and "moved 0 waiting job(s)" in third.stdout, third.stdout
    assert control.read_phase().epoch == 4
    control.close()
