"""Proof: a hypothesis state machine over enqueue (the real Router) / advance / rollback (the real
CLI, forced past preconditions so every ordering is reachable) / drain (the real CLI, in
rampdown) / a cutover worker's burst on either side (the real Worker + PhaseGate fence) / a
producer crash (the Router's in-memory state dropped, a new one opened), with in-memory
backends on both sides and a real PostgreSQL control plane (a fresh schema per example).

Invariants checked after every step (DESIGN.md 1-3): every accepted job either ran or is still
held by a backend (never lost); no job ran twice (counted by the task itself); a drain run
twice moves nothing the second time.

Not modelled here (covered elsewhere or not yet): a worker's crash mid-job (lease expiry:
tests/integration/test_fence.py), kill -9 of the phase change (tests/faults/
test_kill_phase_change.py), the preconditions (every move is forced), RQ and Procrastinate
themselves (in-memory backends), and several producers or workers at once (one of each, steps
run one at a time)."""

from __future__ import annotations

import os
import uuid
from collections import Counter

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cutover import InMemoryBackend, Router
from cutover.cli import cli
from cutover.control import ControlPlane
from cutover.fence import PhaseGate
from cutover.phases import Phase, Side
from cutover.testing import tasks
from cutover.testing.tasks import registry
from cutover.worker import Worker

pytestmark = [pytest.mark.pg]

APP = "cutover.testing.tasks:registry"


class CutoverMachine(RuleBasedStateMachine):
    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:8]
        self.schema = f"phaseproof_{tag}"
        os.environ["CUTOVER_SCHEMA"] = self.schema
        self.src_url, self.tgt_url = f"memory://src-{tag}", f"memory://tgt-{tag}"
        self.source, self.target = InMemoryBackend(self.src_url), InMemoryBackend(self.tgt_url)
        self.control = ControlPlane(self.url, schema=self.schema)
        self.control.init()
        tasks.reset()
        self.router = self._router()
        self.accepted: dict[int, str] = {}
        self.n = 0

    def _router(self) -> Router:
        return Router(registry, source=self.src_url, target=self.tgt_url, control=self.url,
                      refresh=0.05)

    def _cli(self, *args: str) -> str:
        result = CliRunner().invoke(cli, ["--source", self.src_url, "--target", self.tgt_url,
                                          "--control", self.url, "--app", APP, *args])
        assert result.exit_code == 0, (args, result.output)
        return result.output

    @property
    def phase(self) -> Phase:
        return self.control.read_phase().phase

    @rule(k=st.integers(1, 3))
    def enqueue(self, k: int) -> None:
        for _ in range(k):
            self.accepted[self.n] = self.router.enqueue(tasks.add, self.n, 0)
            self.n += 1

    @precondition(lambda self: self.phase is not Phase.COMPLETE)
    @rule()
    def advance(self) -> None:
        self._cli("phase", "advance", "--yes", "--force", "--why", "machine")

    @precondition(lambda self: self.phase is not Phase.OFF)
    @rule()
    def rollback(self) -> None:
        self._cli("rollback", "--yes", "--force", "--why", "machine")

    @precondition(lambda self: self.phase is Phase.RAMPDOWN)
    @rule()
    def drain_twice(self) -> None:
        self._cli("drain", "--yes")
        again = self._cli("--json", "drain", "--yes")
        assert '"moved": 0' in again, again

    @rule(side=st.sampled_from(["source", "target"]))
    def worker_burst(self, side: str) -> None:
        backend = self.source if side == "source" else self.target
        gate = PhaseGate(self.control, backend, Side(side),
                         source=self.source if side == "target" else None)
        try:
            Worker(backend, registry, burst=True, poll_interval=0.01, gate=gate).run(
                install_signal_handlers=False)
        finally:
            gate.close()  # its heartbeat thread and watcher connection end with the burst

    @rule()
    def producer_crash(self) -> None:
        self.router.close()
        self.router = self._router()

    @invariant()
    def no_job_lost_none_ran_twice(self) -> None:
        runs = Counter(kw["a"] for name, kw in tasks.calls if name == "add")
        assert {n: c for n, c in runs.items() if c > 1} == {}, "a job ran twice"
        held = {r.id for r in self.source.snapshot()} | {r.id for r in self.target.snapshot()}
        lost = [n for n, job_id in self.accepted.items() if not runs[n] and job_id not in held]
        assert lost == [], f"accepted jobs neither ran nor are held: {lost}"

    def teardown(self) -> None:
        self.router.close()
        self.control.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        os.environ.pop("CUTOVER_SCHEMA", None)


def test_phase_state_machine(cutover_database_url: str) -> None:
    CutoverMachine.url = cutover_database_url
    run_state_machine_as_test(CutoverMachine, settings=settings(
        max_examples=12, stateful_step_count=12, deadline=None,
        suppress_health_check=list(HealthCheck)))
