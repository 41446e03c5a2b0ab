"""Rollback regressions against real servers (RQ source, Procrastinate target)."""

from __future__ import annotations

import json
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
