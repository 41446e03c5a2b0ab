"""`cutover status` warns about jobs waiting where no cutover worker runs them. After
`complete` the source's workers are idle: a producer that still writes RQ only (one left
without CUTOVER_TARGET, or with a CUTOVER_CONTROL naming a database without the control schema,
which it reads as phase off) gets an id back and its job never runs. Found by hand: six such
jobs sat on the source after complete, `cutover status` exit 0 without a word."""

from __future__ import annotations

import pytest

from cutover import Router
from cutover.control import ControlPlane
from cutover.errors import ConfigurationError
from cutover.phases import Phase
from cutover.testing import tasks
from tests.integration.drain_helpers import invoke, invoke_json

pytestmark = [pytest.mark.rq, pytest.mark.pg]


def _force(source: str, target: str, *args: str) -> None:
    result = invoke(source, target, *args, "--yes", "--force", "--why", "test")
    assert result.exit_code == 0, result.output


def test_status_warns_about_jobs_waiting_on_the_idle_source_after_complete(
        urls: tuple[str, str]) -> None:
    source, target = urls
    for _ in range(3):
        _force(source, target, "phase", "advance")
    _force(source, target, "complete")
    control = ControlPlane(target)
    try:
        assert control.read_phase().phase is Phase.COMPLETE
    finally:
        control.close()
    code, doc = invoke_json(source, target, "status")
    assert code == 0 and "warnings" not in doc  # nothing stranded yet

    # A producer that never got the target: since the cut-over marker it refuses to enqueue
    # (test_cutover_marker.py); one given unfenced= writes the source anyway, and status
    # must still see what it strands.
    refused = Router(tasks.registry, source=source)
    try:
        with pytest.raises(ConfigurationError, match="refusing to enqueue"):
            refused.enqueue(tasks.add, 0, 0)
    finally:
        refused.close()
    stale = Router(tasks.registry, source=source, unfenced="status test")
    try:
        for n in range(3):
            stale.enqueue(tasks.add, n, n)
    finally:
        stale.close()
    code, doc = invoke_json(source, target, "status")
    assert code == 0
    warnings = doc.get("warnings", [])
    assert len(warnings) == 1, warnings
    assert "3 job(s) waiting on the source" in warnings[0]
    assert "complete" in warnings[0]
    text = invoke(source, target, "status").output
    assert "WARNING 3 job(s) waiting on the source" in text
