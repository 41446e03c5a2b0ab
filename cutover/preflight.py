"""The preconditions of a phase move, evaluated against the control plane and both backends.

:mod:`cutover.phases` names the checks a move needs; this module measures each one and returns
its :class:`~cutover.phases.Outcome` (passed, and what the operator should read), never deciding
itself: ``phases.decide`` does. Each check catches the toolkit's errors into a refusal with
their message, so one unreachable piece refuses its own check, by name, and the others still
report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from cutover.backend import QueueBackend
from cutover.control import ControlPlane, MemberKind
from cutover.control import fleet as fleet_family
from cutover.errors import CutoverError
from cutover.phases import Check, Mode, Outcome, Phase, Side, Transition, mode
from cutover.record import JobRecord, JobState
from cutover.registry import TaskRegistry
from cutover.settings import Settings

#: Job states that count as "still waiting on the source" for SOURCE_DRAINED.
WAITING = (JobState.QUEUED, JobState.SCHEDULED, JobState.DEFERRED, JobState.HELD,
           JobState.STARTED)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """How much evidence a move wants; the command line's from its Settings
    (:meth:`from_settings`):
    CUTOVER_SHADOW_MIN_JOBS (100), CUTOVER_SHADOW_MIN_RATE (0.99), CUTOVER_ACK_WAIT (seconds a
    check waits for producers to acknowledge the epoch, 10), CUTOVER_FLEET_LEASE (seconds a
    member stays alive after its last heartbeat, 15)."""

    shadow_min_jobs: int = 100
    shadow_min_rate: float = 0.99
    ack_wait: float = 10.0
    fleet_lease: float = fleet_family.LEASE

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        """The thresholds of ``settings`` (their variables validated there, named if refused)."""
        return cls(shadow_min_jobs=settings.shadow_min_jobs,
                   shadow_min_rate=settings.shadow_min_rate, ack_wait=settings.ack_wait,
                   fleet_lease=(cls.fleet_lease if settings.fleet_lease is None
                                else settings.fleet_lease))


@dataclasses.dataclass
class Preflight:
    """What the checks look at: the control plane, both sides, the registry (--app)."""

    control: ControlPlane
    source: QueueBackend
    target: QueueBackend
    source_url: str
    target_url: str
    registry: TaskRegistry | None
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    #: () -> (clean, detail); default: ``cutover.verify`` of the pair (tests replace it).
    verifier: Callable[[], tuple[bool, str]] | None = None

    def side(self, side: Side) -> QueueBackend:
        return self.source if side is Side.SOURCE else self.target

    def evaluate(self, move: Transition, epoch: int) -> dict[Check, Outcome]:
        """The outcome of every check ``move`` needs (``epoch``: the phase's epoch now)."""
        runs: dict[Check, Callable[[], Outcome]] = {
            Check.SCHEMA: self.schema,
            Check.TASKS_RESOLVABLE: self.tasks_resolvable,
            Check.SHADOW_CONSISTENCY: self.shadow_consistency,
            Check.WORKERS_ALIVE: lambda: self.workers_alive(move.to, epoch),
            Check.NO_NATIVE_BYPASS: lambda: self.no_native_bypass(move.to),
            Check.PRODUCERS_ACKNOWLEDGED: lambda: self.producers_acknowledged(epoch),
            Check.SOURCE_DRAINED: self.source_drained,
            Check.VERIFY_CLEAN: self.verify_clean,
        }
        outcomes: dict[Check, Outcome] = {}
        for check in move.checks:
            run = runs.get(check)
            if run is None:
                continue  # a check this module does not know stays unevaluated: it refuses
            try:
                outcomes[check] = run()
            except CutoverError as exc:
                outcomes[check] = Outcome(False, str(exc))
        return outcomes

    # -- the checks ------------------------------------------------------------------------
    def schema(self) -> Outcome:
        self.control.require()
        return Outcome(True, f"control schema {self.control.schema!r} at version "
                             f"{self.control.schema_version()}")

    def tasks_resolvable(self) -> Outcome:
        if self.registry is None:
            return Outcome(False, "no task registry to check: pass --app MODULE:ATTR")
        if not len(self.registry):
            return Outcome(False, "the task registry has no tasks")
        bad: list[str] = []
        for task in self.registry:
            for name in (task.name, *task.aliases):
                found = self.registry.get(name)
                if found is None or found.name != task.name:
                    bad.append(name)
            problem = getattr(self.target, "cannot_hold", None)
            if problem is not None:
                # The task's name and queue as the target would store them (no arguments).
                why = problem(JobRecord(id=f"preflight-{task.name}", task=task.name,
                                        queue=task.queue))
                if why:
                    bad.append(f"{task.name} ({'; '.join(why)})")
        if bad:
            return Outcome(False, "not resolvable on the target: " + ", ".join(bad[:20]))
        return Outcome(True, f"{len(self.registry)} task(s) resolve")

    def shadow_consistency(self) -> Outcome:
        t = self.thresholds
        rate = self.control.shadow_rate()
        detail = (f"{rate.matched}/{rate.jobs} dry runs matched ({rate.rate:.2%}); needs "
                  f">= {t.shadow_min_jobs} at >= {t.shadow_min_rate:.2%}")
        if rate.jobs < t.shadow_min_jobs or rate.rate < t.shadow_min_rate:
            bad = self.control.shadow_mismatches(5)
            if bad:
                detail += "; mismatched: " + ", ".join(f"{i} ({d or '?'})" for i, d in bad)
            return Outcome(False, detail)
        return Outcome(True, detail)

    def workers_alive(self, to: Phase, epoch: int | None = None) -> Outcome:
        """A cutover worker alive on each side in service in ``to``; and, given the current
        ``epoch``, every live worker on those sides acting on it (waiting up to ``ack_wait``):
        a worker still on an older phase could run a job without the fence once the other
        side starts running its copies (say, one that never saw ``shadow`` when ``live``
        begins)."""
        deadline = time.monotonic() + self.thresholds.ack_wait
        while True:
            members = self.control.alive(self.thresholds.fleet_lease, kind=MemberKind.WORKER)
            sides = [side for side in Side if mode(to, side) is not Mode.IDLE]
            behind = [m for m in members if m.side in sides and epoch is not None
                      and m.acked_epoch < epoch]
            if not behind or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        missing, seen = [], []
        for side in sides:
            n = sum(1 for m in members if m.side is side)
            seen.append(f"{side} {n}")
            if not n:
                missing.append(f"no cutover worker alive on the {side} "
                               f"({self.side(side).url}): start `cutover worker --backend "
                               f"{side}`")
        if behind:
            missing.append(f"{len(behind)} cutover worker(s) have not acknowledged epoch "
                           f"{epoch} after {self.thresholds.ack_wait:g}s (still acting on an "
                           f"older phase): " + ", ".join(
                               f"{m.side} {m.host} pid {m.pid} at epoch {m.acked_epoch}"
                               for m in behind[:10]))
        if missing:
            return Outcome(False, "; ".join(missing))
        return Outcome(True, "alive: " + ", ".join(seen)
                       + ("" if epoch is None else f", all at epoch {epoch}"))

    def no_native_bypass(self, to: Phase) -> Outcome:
        declared = {i for m in self.control.alive(self.thresholds.fleet_lease)
                    for i in m.native_ids}
        found: list[str] = []
        for side in Side:
            if mode(to, side) not in (Mode.FENCED, Mode.DRY):
                continue  # a native worker there runs jobs no other side has
            backend = self.side(side)
            lookup = getattr(backend, "native_workers", None)
            if lookup is None:
                found.append(f"the {side}'s adapter ({backend.name}) cannot list its own "
                             f"workers: check by hand, then --force --why")
                continue
            for w in lookup(exclude=declared):
                found.append(f"{side} {backend.name} worker {w.id} ({w.detail}) would run "
                             f"jobs without the fence in {to}: stop it")
        if found:
            return Outcome(False, "; ".join(found[:10]))
        return Outcome(True, "no native worker alive where the fence or dry runs apply")

    def producers_acknowledged(self, epoch: int) -> Outcome:
        deadline = time.monotonic() + self.thresholds.ack_wait
        while True:
            producers = self.control.alive(self.thresholds.fleet_lease,
                                           kind=MemberKind.PRODUCER)
            behind = [p for p in producers if p.acked_epoch < epoch]
            if not behind or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        if behind:
            return Outcome(False, f"{len(behind)} of {len(producers)} live producer(s) have not "
                                  f"acknowledged epoch {epoch} after "
                                  f"{self.thresholds.ack_wait:g}s: " + ", ".join(
                                      f"{p.host} pid {p.pid} at epoch {p.acked_epoch}"
                                      for p in behind[:10]))
        return Outcome(True, f"{len(producers)} live producer(s) at epoch {epoch}")

    def source_drained(self) -> Outcome:
        waiting: dict[str, int] = {}
        for queue, per in self.source.counts().items():
            n = sum(per.get(s, 0) for s in WAITING)
            if n:
                waiting[queue] = n
        if waiting:
            return Outcome(False, f"{sum(waiting.values())} job(s) still on the source: "
                                  + ", ".join(f"{q} {n}" for q, n in sorted(waiting.items()))
                                  + " (let its workers finish them, or `cutover drain`)")
        return Outcome(True, "nothing waiting on the source")

    def verify_clean(self) -> Outcome:
        clean, detail = (self.verifier or self._verify)()
        return Outcome(clean, detail)

    def _verify(self) -> tuple[bool, str]:
        from cutover.verify import verify  # verify imports the drain's world: only when asked

        report = verify(self.source, self.source_url, self.target, self.target_url,
                        self.control)
        # The verdict, and the jobs it names (the summary's per-list lines, ids by list).
        lines = report.summary().splitlines()
        return report.clean, "; ".join([lines[0], *(line.strip() for line in lines[2:])])
