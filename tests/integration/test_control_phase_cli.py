"""`cutover phase show|advance|set`, `rollback`, `complete` against a real control plane
(PostgreSQL) and in-memory backends: each precondition refuses by its name, a forced move is
recorded with who and why, a rollback out of rampdown moves the target's jobs back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cutover import InMemoryBackend
from cutover.cli import cli
from cutover.control import ControlPlane, MemberKind
from cutover.phases import Phase
from cutover.testing import tasks
from cutover.testing.tasks import registry

APP = "cutover.testing.tasks:registry"


class Walk:
    """One cut-over: a control plane and two in-memory stores."""

    def __init__(self, control_url: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.control_url = control_url
        self.source_url, self.target_url = f"memory://src-{tag}", f"memory://tgt-{tag}"
        self.source, self.target = (InMemoryBackend(self.source_url),
                                    InMemoryBackend(self.target_url))
        self.control = ControlPlane(control_url)
        self.control.init()

    def run(self, *args: str, source: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--source", source or self.source_url, "--target",
                                        self.target_url, "--control", self.control_url,
                                        "--app", APP, *args])

    def json(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.run("--json", *args)
        return result.exit_code, json.loads(result.stdout)

    def workers(self) -> None:
        """A cutover worker on each side, acting on the current epoch (force_to keeps them up
        to date, as running workers would)."""
        self.members = [self.control.register(MemberKind.WORKER, side=side, backend="memory",
                                              epoch=self.phase[1])
                        for side in ("source", "target")]

    def force_to(self, phase: Phase) -> None:
        while self.control.read_phase().phase is not phase:
            assert self.run("phase", "advance", "--yes", "--force", "--why", "test").exit_code == 0
            for member in getattr(self, "members", []):
                self.control.ack_epoch(member, self.phase[1])

    @property
    def phase(self) -> tuple[Phase, int]:
        state = self.control.read_phase()
        return state.phase, state.epoch


@pytest.fixture
def walk(cutover_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Walk]:
    monkeypatch.setenv("CUTOVER_SHADOW_MIN_JOBS", "3")
    monkeypatch.setenv("CUTOVER_ACK_WAIT", "0.3")
    w = Walk(cutover_database_url)
    yield w
    w.control.close()


def test_phase_advance_refuses_by_check_name_and_changes_nothing(walk: Walk) -> None:
    result = walk.run("phase", "advance", "--yes")
    assert result.exit_code == 3, result.output
    assert "off -> shadow: REFUSED" in result.output
    assert "REFUSED  workers_alive: no cutover worker alive on the source" in result.output
    assert "ok  tasks_resolvable" in result.output
    assert walk.phase == (Phase.OFF, 0)


def test_phase_advance_dry_run_prints_the_checks_and_moves_nothing(walk: Walk) -> None:
    walk.workers()
    result = walk.run("phase", "advance", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "off -> shadow: would move" in result.output
    for check in ("schema_present", "tasks_resolvable", "workers_alive", "no_native_bypass"):
        assert f"ok  {check}" in result.output
    assert walk.phase == (Phase.OFF, 0)
    assert walk.control.history() == []


def test_phase_advance_moves_records_and_show_reports_it(walk: Walk) -> None:
    walk.workers()
    assert walk.run("phase", "advance", "--yes", "--why", "go").exit_code == 0
    assert walk.phase == (Phase.SHADOW, 1)
    code, doc = walk.json("phase", "show")
    assert code == 0
    assert doc["phase"] == "shadow" and doc["epoch"] == 1
    assert doc["source"] == walk.source_url and doc["target"] == walk.target_url
    assert doc["history"][0]["to"] == "shadow" and doc["history"][0]["why"] == "go"
    assert {m["side"] for m in doc["fleet"]} == {"source", "target"}
    text = walk.run("phase", "show").output
    assert "phase shadow (epoch 1)" in text and "workers alive: 2" in text


def test_phase_advance_refuses_a_native_worker_that_would_bypass_the_fence(walk: Walk) -> None:
    walk.workers()
    walk.target.declare_native_worker("proc-17", "host db1")
    code, doc = walk.json("phase", "advance", "--yes")
    assert code == 3
    refusal = {r["check"]: r["detail"] for r in doc["refusals"]}
    assert set(refusal) == {"no_native_bypass"} and "proc-17" in refusal["no_native_bypass"]
    walk.target.declare_native_worker("proc-17", alive=False)
    assert walk.run("phase", "advance", "--yes").exit_code == 0


def test_phase_live_needs_enough_matching_dry_runs(walk: Walk) -> None:
    walk.workers()
    walk.force_to(Phase.SHADOW)
    walk.control.record_shadow("a", True)
    walk.control.record_shadow("b", False, "digest differs")
    result = walk.run("phase", "advance", "--yes")
    assert result.exit_code == 3
    assert "shadow_consistency: 1/2 dry runs matched" in result.output
    assert "b (digest differs)" in result.output
    for job in ("b", "c", "d"):
        walk.control.record_shadow(job, True)
    assert walk.run("phase", "advance", "--yes").exit_code == 0
    assert walk.phase[0] is Phase.LIVE


def test_phase_force_needs_a_reason_and_records_who_and_why(walk: Walk) -> None:
    assert walk.run("phase", "advance", "--yes", "--force").exit_code == 2
    result = walk.run("phase", "advance", "--yes", "--force", "--why", "maintenance window")
    assert result.exit_code == 0 and "FORCED" in result.output
    entry = walk.control.history()[0]
    assert entry.forced and entry.why == "maintenance window" and entry.who
    assert "workers_alive" in {r["check"] for r in entry.refusals}


def test_phase_is_fixed_to_its_pair(walk: Walk) -> None:
    walk.force_to(Phase.SHADOW)
    other = f"memory://other-{uuid.uuid4().hex[:6]}"
    result = walk.run("phase", "advance", "--yes", "--force", "--why", "x", source=other)
    assert result.exit_code == 2 and "not " + other in result.output
    assert walk.phase == (Phase.SHADOW, 1)


def test_phase_set_refuses_a_jump_and_unknown_names(walk: Walk) -> None:
    assert walk.run("phase", "set", "live", "--yes").exit_code == 2
    assert walk.run("phase", "set", "sideways", "--yes").exit_code == 2
    walk.workers()
    assert walk.run("phase", "set", "shadow", "--yes").exit_code == 0
    assert walk.control.history()[0].kind == "set"


def test_complete_refuses_until_producers_acked_source_drained_and_verified(
        walk: Walk) -> None:
    walk.force_to(Phase.RAMPDOWN)
    producer = walk.control.register(MemberKind.PRODUCER, epoch=0)
    walk.source.enqueue([registry.make_record(tasks.add, (1, 2))])
    code, doc = walk.json("complete", "--yes")
    assert code == 3
    refusal = {r["check"]: r["detail"] for r in doc["refusals"]}
    assert "have not acknowledged epoch 3" in refusal["producers_acknowledged"]
    assert "1 job(s) still on the source" in refusal["source_drained"]
    assert "verify_clean" in refusal
    walk.control.ack_epoch(producer, 3)
    walk.source.flush()
    code, doc = walk.json("complete", "--dry-run")
    assert {r["check"] for r in doc["refusals"]} == {"verify_clean"}
    assert walk.phase[0] is Phase.RAMPDOWN


def test_rollback_from_rampdown_moves_the_targets_waiting_jobs_back(walk: Walk) -> None:
    walk.workers()
    walk.force_to(Phase.RAMPDOWN)
    ids = walk.target.enqueue([registry.make_record(tasks.add, (i, 1)) for i in range(3)])
    result = walk.run("rollback", "--yes")
    assert result.exit_code == 0, result.output
    assert "rampdown -> live" in result.output and "moved 3 waiting job(s) back" in result.output
    assert walk.phase == (Phase.LIVE, 4)
    back = {r.id for r in walk.source.snapshot()}
    assert back == set(ids)
    assert sum(sum(per.values()) for per in walk.target.counts().values()) == 0
    assert walk.control.history()[0].kind == "rollback"


def test_rollback_out_of_complete_needs_force(walk: Walk) -> None:
    walk.force_to(Phase.COMPLETE)
    result = walk.run("rollback", "--yes")
    assert result.exit_code == 3 and "point_of_no_return" in result.output
    result = walk.run("rollback", "--yes", "--force", "--why", "bad data")
    assert result.exit_code == 0, result.output
    assert walk.phase[0] is Phase.RAMPDOWN


def test_phase_commands_refuse_without_a_control_schema(cutover_database_url: str) -> None:
    result = CliRunner().invoke(cli, ["--source", "memory://a", "--target", "memory://b",
                                      "--control", cutover_database_url, "--app", APP, "phase",
                                      "advance", "--yes"],
                                env={"CUTOVER_SCHEMA": "cutover_none"})
    assert result.exit_code == 3 and "schema_present" in result.output


def test_phase_advance_without_a_registry_refuses_tasks_resolvable(walk: Walk) -> None:
    walk.workers()
    result = CliRunner().invoke(cli, ["--source", walk.source_url, "--target", walk.target_url,
                                      "--control", walk.control_url, "phase", "advance",
                                      "--yes"], env={"CUTOVER_APP": ""})
    assert result.exit_code == 3
    assert "REFUSED  tasks_resolvable: no task registry to check: pass --app" in result.output


def test_rollback_moves_nothing_back_until_producers_acknowledged(walk: Walk) -> None:
    walk.workers()
    walk.force_to(Phase.RAMPDOWN)
    producer = walk.control.register(MemberKind.PRODUCER, epoch=3)
    ids = walk.target.enqueue([registry.make_record(tasks.add, (1, 1))])
    code, doc = walk.json("rollback", "--yes")
    assert code == 3
    assert walk.phase == (Phase.LIVE, 4)  # the phase moved: producers write both sides again
    assert "have not acknowledged epoch 4" in doc["producers_acknowledged"]["detail"]
    assert [r.id for r in walk.target.snapshot()] == ids  # nothing moved while one lags
    assert list(walk.source.snapshot()) == []
    walk.control.ack_epoch(producer, 4)
    result = CliRunner().invoke(cli, ["--source", walk.target_url, "--target", walk.source_url,
                                      "--control", walk.control_url, "--app", APP, "drain",
                                      "--yes"])
    assert result.exit_code == 0, result.output
    assert [r.id for r in walk.source.snapshot()] == ids


def test_advance_refuses_while_a_worker_still_acts_on_an_older_phase(walk: Walk) -> None:
    """A source worker that never saw ``shadow`` (its epoch 0: it runs jobs without the fence)
    must not be there when ``live`` starts running the target's copies."""
    walk.force_to(Phase.SHADOW)
    behind = walk.control.register(MemberKind.WORKER, side="source", backend="memory", epoch=0)
    walk.control.register(MemberKind.WORKER, side="target", backend="memory", epoch=1)
    code, doc = walk.json("phase", "advance", "--dry-run")
    assert code == 3
    refusal = {r["check"]: r["detail"] for r in doc["refusals"]}
    assert "1 cutover worker(s) have not acknowledged epoch 1" in refusal["workers_alive"]
    assert "source" in refusal["workers_alive"] and "at epoch 0" in refusal["workers_alive"]
    walk.control.ack_epoch(behind, 1)
    _, doc = walk.json("phase", "advance", "--dry-run")
    assert "workers_alive" not in {r["check"] for r in doc["refusals"]}
