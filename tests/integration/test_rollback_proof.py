"""Rollback regressions against real servers (RQ source, Procrastinate target)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from cutover.cli import cli
from cutover.phases import Phase, Side
from tests.integration import test_fence
from tests.integration.fence_tasks import registry
from tests.integration.test_fence import Pairing

pytestmark = [pytest.mark.rq, pytest.mark.pg]

pairing = test_fence.pairing  # the fixture: RQ source, Procrastinate target, FENCE_RUNS_URL set

APP = "tests.integration.fence_tasks:registry"
#: How long a wait may see no progress before it fails.
STALL = 30.0


def rollback_cli(pairing: Pairing, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["--source", pairing.source_url, "--target",
                                      pairing.target_url, "--app", APP, "--json", "rollback",
                                      "--yes", *args])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


@pytest.mark.parametrize("frm", [Phase.LIVE, Phase.RAMPDOWN])
def test_a_source_copy_whose_target_copy_ran_does_not_run_again_after_a_rollback_to_off(
        pairing: Pairing, frm: Phase) -> None:
    """Regression: in off after a rollback (epoch > 0) the source ran unfenced, so the source
    copy of a job written in live whose target copy had run ran a second time."""
    pairing.set_phase(Phase.LIVE)
    pairing.dual("fence.count", "ran-on-target")
    pairing.set_phase(frm)
    assert pairing.worker(Side.TARGET).run(install_signal_handlers=False).succeeded == 1
    doc = rollback_cli(pairing, "--to", "off")
    assert doc["phase"] == "off" and doc["moves_back"] is True
    report = pairing.worker(Side.SOURCE).run(install_signal_handlers=False)
    assert (report.succeeded, report.duplicates) == (0, 1)
    assert pairing.runs() == {"ran-on-target": 1}
    # A job written in off after the rollback runs on the source as usual (through the fence).
    pairing.source.enqueue([registry.make_record("fence.count", ("after",), {})])
    assert pairing.worker(Side.SOURCE).run(install_signal_handlers=False).succeeded == 1
    assert pairing.runs() == {"ran-on-target": 1, "after": 1}


def test_the_move_back_waits_for_a_job_running_on_the_target_instead_of_leaving_it(
        pairing: Pairing) -> None:
    """Regression: a move back reported every job running on the target as left there (exit 3),
    so under a busy fleet a rollback out of rampdown never succeeded. It now waits (bounded) for
    the jobs running when its passes end; new jobs workers start meanwhile do not prolong it."""
    pairing.set_phase(Phase.RAMPDOWN)
    record = registry.make_record("fence.slow_first", ("long", 2.0), {})
    pairing.target.enqueue([record])
    pairing.worker(Side.SOURCE)  # alive in the fleet (rollback checks it), not running ...
    pairing.gates[-1].mode()  # ... at the current epoch
    worker = pairing.worker(Side.TARGET, burst=False, concurrency=1)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        wait(lambda: pairing.runs("started").get("long") == 1, "the target to start the job")
        waiting_job = registry.make_record("fence.count", ("waiting",), {})
        pairing.target.enqueue([waiting_job])  # the one thread is busy: this one waits
        started = time.monotonic()
        doc = rollback_cli(pairing)
        assert doc["phase"] == "live" and not doc["left_on_target"]
        assert doc["moved_back"]["moved"] == 1 and doc["moved_back"]["running"] == []
        assert 0.5 < time.monotonic() - started < 20
        assert pairing.runs() == {"long": 1}  # it ended on the target while the command waited
        moved = pairing.source.get(waiting_job.id)
        assert moved is not None and moved.state.live
    finally:
        worker.stop()
        thread.join(30)


def wait(check: Callable[[], bool], what: str, timeout: float = STALL) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
