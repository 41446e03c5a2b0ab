"""Rollbacks into every earlier phase (issue 13, items 2, 7 and 9), proven by counting executions
from the tasks' side (fence_runs), never from the toolkit's bookkeeping:

- the shadow dry run never removes a target copy that is the only one (no source copy, no
  finished claim): it stays for the rollback's move back, or for the target's run in a later
  phase, whatever the order of the two;
- a rollback from every phase into every earlier phase, with both sides' cutover workers
  running, producers through the Router and one producer slow to acknowledge the new epoch
  (its call routed by the old phase writes after the rollback committed): every accepted id
  runs exactly once;
- ``cutover drain`` refuses to move jobs into a side whose workers would dry-run or never run
  them in the current phase, naming the command to use;
- two bare ``cutover rollback``s at once: one steps back, the other is refused (exit 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cutover.cli import cli
from cutover.control import ControlPlane, MemberKind
from cutover.control.ledger import LedgerState
from cutover.fence import PhaseGate
from cutover.phases import Phase, Side, decide
from cutover.phases import rollback as rollback_move
from cutover.record import JobRecord
from cutover.worker import Worker
from tests.integration.fence_tasks import registry
from tests.integration.test_fence import ROOT, Pairing
from tests.integration.test_rollback_proof import (
    APP,
    Producers,
    Walk,
    wait,
    wait_progressing,
)

pytestmark = [pytest.mark.rq, pytest.mark.pg]

#: The slow producer: a Router whose target write waits SLOW seconds, so that a call routed by
#: the old phase is still writing (and its producer has not acknowledged) when the rollback
#: commits; it writes by the old phase after the commit, as a producer slow to acknowledge.
SLOW = 1.5

SLOW_PRODUCER = """
import sys, os, time
from cutover import Router
from tests.integration.fence_tasks import registry
slow = float(sys.argv[5])
real = Router._write_target
def late(self, *args, **kwargs):
    time.sleep(slow)
    return real(self, *args, **kwargs)
Router._write_target = late
router = Router(registry, source=sys.argv[1], target=sys.argv[2], refresh=0.2, heartbeat=0.3)
name, stop, n = sys.argv[3], sys.argv[4], 0
while not os.path.exists(stop):
    n += 1
    try:
        print(f"{name}-{n} {router.enqueue('fence.count', f'{name}-{n}')}", flush=True)
    except Exception as exc:  # not accepted: not counted
        print(f"error {exc!r}", file=sys.stderr, flush=True)
    time.sleep(0.1)
router.close()
"""


class SlowProducers(Producers):
    """:class:`Producers` (two threads on one Router, one producer process) plus one producer
    process that is slow to acknowledge each epoch (see :data:`SLOW_PRODUCER`)."""

    def __init__(self, pairing: Pairing, tmp: Path) -> None:
        super().__init__(pairing, tmp)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]))
        self.procs.append(subprocess.Popen(
            [sys.executable, "-c", SLOW_PRODUCER, pairing.source_url, pairing.target_url,
             "slow", str(self.stop_file), str(SLOW)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))


def rollback(pairing: Pairing, to: Phase, *more: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, [
        "--source", pairing.source_url, "--target", pairing.target_url, "--app", APP,
        "--json", "rollback", "--yes", "--to", to.value, *more])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    assert doc["phase"] == to.value and not doc.get("left_on_target"), doc
    return doc


def running(pairing: Pairing) -> tuple[list[Worker], list[threading.Thread]]:
    workers = [pairing.worker(side, burst=False, lease=5.0, concurrency=1)
               for side in (Side.SOURCE, Side.TARGET)]
    threads = [threading.Thread(target=w.run, kwargs={"install_signal_handlers": False})
               for w in workers]
    for t in threads:
        t.start()
    return workers, threads


ROLLBACKS = [(frm, to) for frm in (Phase.SHADOW, Phase.LIVE, Phase.RAMPDOWN, Phase.COMPLETE)
             for to in (Phase.OFF, Phase.SHADOW, Phase.LIVE, Phase.RAMPDOWN) if to.step < frm.step]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("frm", "to"), ROLLBACKS, ids=[f"{f}-{t}" for f, t in ROLLBACKS])
def test_a_rollback_with_the_targets_workers_running_and_a_slow_producer_runs_every_job_once(
        pairing: Pairing, tmp_path: Path, frm: Phase, to: Phase) -> None:
    """Regression (issue 13, item 2): out of rampdown or complete into shadow, the target's
    dry run took each job written there (target copy + ledger row, no source copy) for a
    matched copy and removed it before the move back reached it: 6 of 300 lost with no
    delay, 269 of 300 with a producer slow to acknowledge."""
    workers, threads = running(pairing)
    walk = Walk(pairing)
    producers = SlowProducers(pairing, tmp_path)
    try:
        time.sleep(0.5)
        for phase in (Phase.SHADOW, Phase.LIVE, Phase.RAMPDOWN, Phase.COMPLETE):
            if phase.step > frm.step:
                break
            walk.advance(phase)
            time.sleep(0.5)
        time.sleep(1.5)  # jobs written by frm wait on the target (one job at a time a side)
        started = time.monotonic()
        doc = rollback(pairing, to, *(("--force", "--why", "proof") if frm is Phase.COMPLETE
                                      else ()))
        took = time.monotonic() - started
        time.sleep(1.5)  # producers write by the new phase
    finally:
        accepted, errors = producers.finish()
    try:
        assert sum(1 for k in accepted if k.startswith("slow-")) >= 2
        wait_progressing(lambda: len(set(accepted) - set(pairing.runs())),
                         "every accepted job to run",
                         lambda: sorted(set(accepted) - set(pairing.runs()))[:10])
        time.sleep(1.5)  # a second run, if any, would show now
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(60)
    runs = pairing.runs()
    print(f"{frm} -> {to}: {len(accepted)} accepted, rollback {took:.1f} s, moved back "
          f"{(doc.get('moved_back') or {}).get('moved')}")
    assert {k: n for k, n in runs.items() if n != 1} == {}, "ran more than once"
    assert set(runs) == set(accepted)  # nothing ran that no producer was told was accepted
    assert errors == []


def target_only(pairing: Pairing, n: int, prefix: str) -> list[JobRecord]:
    """Jobs as the Router writes them in rampdown: the target copy and its ledger row, no source
    copy."""
    records = [registry.make_record("fence.count", (f"{prefix}{i}",), {}) for i in range(n)]
    pairing.target.enqueue(records)
    pairing.control.record(records, state=LedgerState.ACCEPTED, source=pairing.pair.source_key,
                           target=pairing.pair.target_key, run_id="router")
    return records


def commit_rollback(pairing: Pairing, to: Phase) -> None:
    """The rollback's commit alone (its move back not run yet: a producer has not
    acknowledged, or the command was killed after its commit)."""
    state = pairing.control.read_phase()
    pairing.control.transition(decide(rollback_move(state.phase, to), {}, force=True,
                                      why="test"), why="test", pair=pairing.pair,
                               kind="rollback")


@pytest.mark.parametrize("frm", [Phase.RAMPDOWN, Phase.COMPLETE])
def test_the_dry_run_leaves_a_target_only_copy_in_place_for_the_move_back(
        pairing: Pairing, frm: Phase) -> None:
    """The dry run before the move back: it compares and removes the copies that have a source
    copy or a finished claim, and leaves the only copies; the move back (`rollback --to shadow`
    run again) moves them; the source runs each once."""
    pairing.set_phase(Phase.LIVE)
    ran = pairing.dual("fence.count", "ran")
    assert pairing.worker(Side.SOURCE).run(install_signal_handlers=False).succeeded == 1
    pairing.source.remove([ran.id])  # its record expired (RQ's result TTL): the claim remains
    dual = pairing.dual("fence.count", "dual")  # both copies, neither ran
    pairing.set_phase(frm)
    alone = target_only(pairing, 20, "alone")
    commit_rollback(pairing, Phase.SHADOW)
    report = pairing.worker(Side.TARGET).run(install_signal_handlers=False)
    assert report.processed == 0 and pairing.runs() == {"ran": 1}
    assert report.shadowed == 2  # dual and ran: compared, removed
    assert sorted(report.skipped) == sorted(r.id for r in alone)
    assert pairing.target.get(dual.id) is None and pairing.target.get(ran.id) is None
    for record in alone:
        copy = pairing.target.get(record.id)
        assert copy is not None and copy.state.live, record.id  # left in place
    rollback(pairing, Phase.SHADOW)  # the re-run does the move back
    for record in alone:
        assert pairing.target.get(record.id) is None
    report = pairing.worker(Side.SOURCE).run(install_signal_handlers=False)
    assert pairing.runs() == {"ran": 1, "dual": 1, **{f"alone{i}": 1 for i in range(20)}}


def test_a_copy_the_dry_run_left_runs_when_the_target_runs_again(pairing: Pairing) -> None:
    """Left in place, not forgotten: the same worker runs it once its mode executes."""
    pairing.set_phase(Phase.RAMPDOWN)
    alone = target_only(pairing, 3, "later")
    commit_rollback(pairing, Phase.SHADOW)
    worker = pairing.worker(Side.TARGET, burst=False, concurrency=1)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        wait(lambda: len(worker.report.skipped) == 3, "the dry run to leave the three")
        assert pairing.runs() == {}
        pairing.set_phase(Phase.LIVE)
        wait(lambda: pairing.runs() == {f"later{i}": 1 for i in range(3)},
             "the target to run them")
    finally:
        worker.stop()
        thread.join(30)
    assert all(pairing.target.get(r.id) is None or not pairing.target.get(r.id).state.live  # type: ignore[union-attr]
               for r in alone)


def drain(pairing: Pairing, *, back: bool = False) -> Any:
    source, target = pairing.source_url, pairing.target_url
    if back:
        source, target = target, source
    return CliRunner().invoke(cli, ["--source", source, "--target", target, "--app", APP,
                                    "drain", "--yes"])


def test_drain_refuses_where_its_target_would_not_run_what_it_moves(pairing: Pairing) -> None:
    """Regression (issue 13, item 7): in shadow a drain moved 200 jobs that the target's dry run
    then removed; in off after a rollback it stranded them on the idle target."""
    # No staged cut-over (off, epoch 0): a plain drain, as before.
    pairing.source.enqueue([registry.make_record("fence.count", ("plain",), {})])
    result = drain(pairing)
    assert result.exit_code == 0, result.output
    back = drain(pairing, back=True)
    assert back.exit_code == 0, back.output
    pairing.set_phase(Phase.SHADOW)
    pairing.source.enqueue([registry.make_record("fence.count", (f"s{i}",), {})
                            for i in range(5)])
    result = drain(pairing)
    assert result.exit_code == 3, result.output
    assert "dry-run" in result.output and "cutover phase advance --from shadow" in result.output
    assert len([r for r in pairing.source.snapshot() if r.state.live]) == 6  # nothing moved
    assert drain(pairing, back=True).exit_code == 0  # back to the source: it runs in shadow
    pairing.set_phase(Phase.LIVE)
    assert drain(pairing).exit_code == 0  # live: the target runs what it gets (fenced)
    commit_rollback(pairing, Phase.OFF)
    pairing.source.enqueue([registry.make_record("fence.count", ("off",), {})])
    result = drain(pairing)
    assert result.exit_code == 3, result.output
    assert "take nothing" in result.output and f"--source {pairing.target.url}" in result.output
    back = drain(pairing, back=True)  # the command it names works
    assert back.exit_code == 0, back.output
    pairing.set_phase(Phase.COMPLETE)
    result = drain(pairing, back=True)
    assert result.exit_code == 3, result.output
    assert "cutover rollback" in result.output


def test_two_bare_rollbacks_at_once_one_steps_back_the_other_is_refused(
        pairing: Pairing) -> None:
    """Regression (issue 13, item 9): both stepped back (rampdown -> live -> shadow). A producer
    slow to acknowledge keeps the first in its move back while the second starts; the workers
    run (they acknowledge each epoch, so no precondition refuses the second)."""
    pairing.set_phase(Phase.RAMPDOWN)
    workers, threads = running(pairing)
    producer = pairing.control.register(MemberKind.PRODUCER, mode="rampdown",
                                        epoch=pairing.control.read_phase().epoch)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]),
        CUTOVER_ACK_WAIT="20")
    command = [sys.executable, "-m", "cutover", "--source", pairing.source_url, "--target",
               pairing.target_url, "--app", APP, "--json", "rollback", "--yes"]
    try:
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait(lambda: pairing.control.read_phase().phase is Phase.LIVE, "the first to commit")
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
        pairing.control.ack_epoch(producer, pairing.control.read_phase().epoch)  # first goes on
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert json.loads(out)["phase"] == "live"
        assert second.returncode == 3, (second.stdout, second.stderr)
        assert "another phase command is under way" in second.stderr + second.stdout
        assert "rollback by" in second.stderr + second.stdout  # names the first
        assert pairing.control.read_phase().phase is Phase.LIVE
        # Once the first has finished, a rollback runs as usual.
        pairing.control.deregister(producer)
        third = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=60)
        assert third.returncode == 0, (third.stdout, third.stderr)
        doc = json.loads(third.stdout)
        assert doc["from"] == "live" and doc["phase"] == "shadow"
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)


def test_rollback_from_names_the_phase_it_leaves_and_is_safe_to_run_again(
        pairing: Pairing) -> None:
    """`rollback --from PHASE` (as `phase advance --from`): a script's second run resumes the
    move back instead of stepping back once more; from any other phase it refuses (exit 2)."""
    pairing.set_phase(Phase.RAMPDOWN)
    alone = target_only(pairing, 3, "from")

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, [
            "--source", pairing.source_url, "--target", pairing.target_url, "--app", APP,
            "--json", "rollback", "--yes", "--force", "--why", "test", *args])

    first = run("--from", "rampdown")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert (doc["from"], doc["phase"], doc["moved"]) == ("rampdown", "live", True)
    assert doc["moved_back"]["moved"] == 3
    again = run("--from", "rampdown")
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert (doc["phase"], doc["moved"], doc["rerun"]) == ("live", False, True)
    assert pairing.control.read_phase().phase is Phase.LIVE  # not a second step back
    assert all(pairing.source.get(r.id) is not None for r in alone)
    pairing.set_phase(Phase.RAMPDOWN)
    assert run("--from", "live").exit_code == 2  # the phase is rampdown: nothing moves
    assert pairing.control.read_phase().phase is Phase.RAMPDOWN
    skip = run("--from", "rampdown", "--to", "shadow")
    assert skip.exit_code == 0, skip.output
    assert json.loads(skip.stdout)["phase"] == "shadow"


def test_a_target_worker_without_the_source_removes_only_copies_whose_claim_finished(
        pairing: Pairing) -> None:
    """A dry run that cannot ask the source (the worker got no --source) cannot tell an only
    copy from a twin: it leaves every copy in place, except one whose claim finished."""
    pairing.set_phase(Phase.LIVE)
    ran = pairing.dual("fence.count", "ran")
    assert pairing.worker(Side.SOURCE).run(install_signal_handlers=False).succeeded == 1
    pairing.set_phase(Phase.RAMPDOWN)
    twin = pairing.dual("fence.count", "twin")
    commit_rollback(pairing, Phase.SHADOW)
    gate = PhaseGate(ControlPlane(pairing.target_url), pairing.target, Side.TARGET, refresh=0.2)
    pairing.gates.append(gate)
    report = Worker(pairing.target, registry, burst=True, isolation="thread",
                    poll_interval=0.05, gate=gate).run(install_signal_handlers=False)
    assert report.shadowed == 1 and pairing.target.get(ran.id) is None
    assert list(report.skipped) == [twin.id] and "--source" in report.skipped[twin.id]
    assert pairing.target.get(twin.id) is not None
