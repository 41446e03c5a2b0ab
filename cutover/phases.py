"""The phase machine: which moves are allowed, what each phase means for producers and workers,
and which preconditions a move must pass. Pure code: no server, no clock, no I/O.

The walk is ``off -> shadow -> live -> rampdown -> complete``:

- ``off``: the application as it was; producers write the source only, its workers run it.
- ``shadow``: producers write both sides (target first); the source executes, the target
  consumes its copies in dry mode (decoded, resolved, compared, never executed).
- ``live``: producers write both sides; both fleets execute through the fence, which lets each
  job run on one side only.
- ``rampdown``: producers write the target only; the source's leftovers run out or are drained.
  Copies written during ``live`` still exist on both sides, so execution stays fenced.
- ``complete``: the source is retired (drained, verified); the point of no return.

Callers (the control plane, the CLI, the Router, the worker) ask this module and act; they never
spell the rules themselves.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from cutover.errors import ConfigurationError


class Phase(enum.StrEnum):
    OFF = "off"
    SHADOW = "shadow"
    LIVE = "live"
    RAMPDOWN = "rampdown"
    COMPLETE = "complete"

    @classmethod
    def parse(cls, name: str) -> Phase:
        try:
            return cls(name.strip().lower())
        except ValueError:
            raise ConfigurationError(f"unknown phase {name!r} (phases: "
                                     f"{', '.join(p.value for p in ORDER)})") from None

    @property
    def step(self) -> int:
        return ORDER.index(self)


ORDER: tuple[Phase, ...] = (Phase.OFF, Phase.SHADOW, Phase.LIVE, Phase.RAMPDOWN, Phase.COMPLETE)


class Side(enum.StrEnum):
    SOURCE = "source"
    TARGET = "target"


class Mode(enum.StrEnum):
    """What a worker on one side does with the jobs it finds in a phase."""

    EXECUTE = "execute"  # run jobs, no fence needed (the job has no copy on the other side)
    FENCED = "fenced"    # run a job only after winning its claim in the fence
    DRY = "dry"          # decode, resolve, compare with the source copy; never run
    IDLE = "idle"        # take nothing (the side is not in service)


def writes(phase: Phase) -> tuple[Side, ...]:
    """Where a producer writes a new job in ``phase``, in order (the target first when both:
    a job the target accepted and the source refused is rolled back with the caller's error;
    the opposite order would leave a source-only job the target's workers never see)."""
    if phase is Phase.OFF:
        return (Side.SOURCE,)
    if phase in (Phase.SHADOW, Phase.LIVE):
        return (Side.TARGET, Side.SOURCE)
    return (Side.TARGET,)


def mode(phase: Phase, side: Side) -> Mode:
    """What a cutover worker on ``side`` does in ``phase``."""
    # A plain "source" string is not Side.SOURCE by identity: it would silently get the
    # target's rules (DRY in shadow: the source's jobs removed unrun). Normalise, or refuse.
    side = Side(side)
    if side is Side.SOURCE:
        return {Phase.OFF: Mode.EXECUTE, Phase.SHADOW: Mode.EXECUTE, Phase.LIVE: Mode.FENCED,
                Phase.RAMPDOWN: Mode.FENCED, Phase.COMPLETE: Mode.IDLE}[phase]
    return {Phase.OFF: Mode.IDLE, Phase.SHADOW: Mode.DRY, Phase.LIVE: Mode.FENCED,
            Phase.RAMPDOWN: Mode.FENCED, Phase.COMPLETE: Mode.EXECUTE}[phase]


class Check(enum.StrEnum):
    """The preconditions, by the name an operator sees when one refuses a move."""

    SCHEMA = "schema_present"                     # control and target schemas exist
    TASKS_RESOLVABLE = "tasks_resolvable"         # every registry task resolves on the target
    SHADOW_CONSISTENCY = "shadow_consistency"     # enough dry runs matched their source copy
    WORKERS_ALIVE = "workers_alive"               # workers of the next phase are heartbeating
    NO_NATIVE_BYPASS = "no_native_bypass"         # no native worker that ignores the fence
    PRODUCERS_ACKNOWLEDGED = "producers_acknowledged"  # every live producer saw the epoch
    SOURCE_DRAINED = "source_drained"             # nothing left waiting on the source
    VERIFY_CLEAN = "verify_clean"                 # the ledger and both backends reconcile
    POINT_OF_NO_RETURN = "point_of_no_return"     # leaving complete backwards


@dataclasses.dataclass(frozen=True)
class Transition:
    """One move of the phase, and what it requires and implies."""

    frm: Phase
    to: Phase
    rollback: bool
    checks: tuple[Check, ...]
    #: The move changes where producers write; a drain that follows must first wait until every
    #: live producer acknowledged the new epoch.
    switches_writes: bool
    #: Jobs waiting on the target are moved back to the source (a rollback out of rampdown or
    #: complete, where the target holds jobs the source never had).
    moves_back: bool
    #: Leaving ``complete`` backwards: refused unless forced.
    past_point_of_no_return: bool

    @property
    def name(self) -> str:
        return f"{self.frm} -> {self.to}"


def _checks_to(frm: Phase, to: Phase) -> tuple[Check, ...]:
    if to is Phase.SHADOW:
        return (Check.SCHEMA, Check.TASKS_RESOLVABLE, Check.WORKERS_ALIVE,
                Check.NO_NATIVE_BYPASS)
    if to is Phase.LIVE:
        return (Check.SCHEMA, Check.SHADOW_CONSISTENCY, Check.WORKERS_ALIVE,
                Check.NO_NATIVE_BYPASS)
    if to is Phase.RAMPDOWN:
        return (Check.SCHEMA, Check.WORKERS_ALIVE, Check.NO_NATIVE_BYPASS)
    if to is Phase.COMPLETE:
        return (Check.SCHEMA, Check.PRODUCERS_ACKNOWLEDGED, Check.SOURCE_DRAINED,
                Check.VERIFY_CLEAN)
    return (Check.SCHEMA,)


def advance(current: Phase) -> Transition:
    """The next step forward from ``current``."""
    if current is Phase.COMPLETE:
        raise ConfigurationError("the cut-over is complete: there is no phase after it")
    to = ORDER[current.step + 1]
    return Transition(frm=current, to=to, rollback=False, checks=_checks_to(current, to),
                      switches_writes=writes(current) != writes(to), moves_back=False,
                      past_point_of_no_return=False)


def rollback(current: Phase, to: Phase | None = None) -> Transition:
    """A step back: one phase by default, or straight to an earlier ``to`` (``off`` included).

    Rolling back out of ``rampdown`` or ``complete`` moves the target's waiting jobs back to the
    source (producers wrote them to the target only); into ``off`` it also moves back what the
    target holds alone. Rolling back out of ``complete`` passes the point of no return.
    """
    if current is Phase.OFF:
        raise ConfigurationError("the phase is off: there is nothing to roll back")
    goal = ORDER[current.step - 1] if to is None else to
    if goal.step >= current.step:
        raise ConfigurationError(f"cannot roll back from {current} to {goal}: {goal} is not "
                                 f"an earlier phase")
    target_only_jobs = current.step >= Phase.RAMPDOWN.step
    moves_back = target_only_jobs or goal is Phase.OFF
    checks: tuple[Check, ...] = (Check.SCHEMA,)
    if goal is not Phase.OFF:
        checks += (Check.WORKERS_ALIVE, Check.NO_NATIVE_BYPASS)
    return Transition(frm=current, to=goal, rollback=True, checks=checks,
                      switches_writes=writes(current) != writes(goal), moves_back=moves_back,
                      past_point_of_no_return=current is Phase.COMPLETE)


def transition(current: Phase, to: Phase) -> Transition:
    """The move ``phase set`` makes: one step forward, or a rollback. Forward jumps of more than
    one step are refused: each step has its own preconditions, so the operator walks them."""
    if to.step == current.step + 1:
        return advance(current)
    if to.step < current.step:
        return rollback(current, to)
    if to is current:
        raise ConfigurationError(f"the phase is {current} already")
    raise ConfigurationError(f"cannot jump from {current} to {to}: advance one phase at a time "
                             f"({' -> '.join(p.value for p in ORDER[current.step:to.step + 1])})")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One precondition's result: passed or not, and what the operator should read."""

    passed: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether a transition may happen now, and why not (each refusal by its check's name)."""

    transition: Transition
    refusals: tuple[tuple[Check, str], ...]
    forced: bool

    @property
    def allowed(self) -> bool:
        return self.forced or not self.refusals


def decide(move: Transition, outcomes: Mapping[Check, Outcome], *, force: bool = False,
           why: str | None = None) -> Decision:
    """Judge ``move`` on the outcomes of its checks. A check without an outcome refuses (a
    precondition nobody evaluated is not a precondition that passed). ``force`` overrides every
    refusal, and leaving ``complete`` backwards, but only with a reason (it is recorded)."""
    refusals: list[tuple[Check, str]] = []
    for check in move.checks:
        outcome = outcomes.get(check)
        if outcome is None:
            refusals.append((check, "not evaluated"))
        elif not outcome.passed:
            refusals.append((check, outcome.detail or "failed"))
    if move.past_point_of_no_return:
        refusals.append((Check.POINT_OF_NO_RETURN, "the cut-over is complete: rolling back "
                                                   "needs --force --why TEXT"))
    if force and not (why and why.strip()):
        raise ConfigurationError("--force needs --why TEXT: a forced phase change is recorded "
                                 "with its reason")
    return Decision(transition=move, refusals=tuple(refusals), forced=force and bool(refusals))


def drain_refusal(phase: Phase, epoch: int, into: Side, source_url: str,
                  target_url: str) -> str | None:
    """Why ``cutover drain`` must not move jobs into the pair's ``into`` side in ``phase``, or
    None. A drain into a side whose workers dry-run (the target in ``shadow``: they compare a
    copy and remove it, never run it) or take nothing (the target in ``off`` after a rollback,
    the source in ``complete``) would strand or lose what it moves. ``off`` at epoch 0 (no
    staged cut-over ever started: a plain drain) is never refused. ``source_url`` /
    ``target_url``: the drain's own (redacted), to spell the command to use instead."""
    if phase is Phase.OFF and epoch == 0:
        return None
    into = Side(into)
    now = mode(phase, into)
    if now not in (Mode.DRY, Mode.IDLE):
        return None
    back = f"`cutover drain --source {target_url} --target {source_url}`"
    if into is Side.TARGET and now is Mode.DRY:
        return (f"in {phase} the target's workers dry-run what they find (compare it with "
                f"the source copy and remove it, never run it): jobs this drain moved there "
                f"would never run. The staged cut-over moves work to the target by its phases: "
                f"`cutover phase advance --from {phase}` (live), then `cutover phase advance "
                f"--from live` (rampdown), where `cutover drain` moves the source's leftovers")
    if into is Side.TARGET:
        return (f"in {phase} (epoch {epoch}: the cut-over was rolled back) the target's workers "
                f"take nothing: jobs this drain moved there would never run. Start the "
                f"cut-over again with `cutover phase advance --from {phase}`; to move the "
                f"target's jobs back to the source: {back}")
    return (f"in {phase} the source's workers take nothing: jobs this drain moved there would "
            f"never run. To step back, `cutover rollback --to rampdown --force --why TEXT` "
            f"moves the target's waiting jobs back itself")
