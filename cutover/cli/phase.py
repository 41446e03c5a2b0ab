"""`cutover phase show|set|advance`, `cutover rollback`, `cutover complete`: walk the staged
cut-over, each move checked by its named preconditions (cutover.preflight), decided by the pure
phase machine (cutover.phases), recorded by the control plane (cutover.control)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

from cutover import faults, marker, stores
from cutover.backend import QueueBackend
from cutover.cli.context import Context, confirm, emit, opened
from cutover.control import ControlPlane, MemberKind, Pair, PhaseState
from cutover.drain import Drain, DrainOptions
from cutover.errors import ConfigurationError
from cutover.phases import Check, Decision, Phase, Transition, advance, decide
from cutover.phases import rollback as rollback_move
from cutover.phases import transition as set_move
from cutover.preflight import Preflight, Thresholds
from cutover.record import JobState

Refused = click.exceptions.Exit

#: A move back waits this long for the jobs running on the target when its passes end (a retry
#: of one is waiting again, and moved); still running after it, they are reported (exit 3).
MOVE_BACK_WAIT_RUNNING = 30.0


@click.group()
def phase() -> None:
    """The phase of the staged cut-over: off -> shadow -> live -> rampdown -> complete."""


@phase.command("show")
@click.option("--history", "limit", default=10, show_default=True, type=click.IntRange(0, 1000),
              help="How many recorded transitions to list.")
@click.pass_obj
def show(ctx: Context, limit: int) -> None:
    """The phase, its epoch, the pair it belongs to, the latest transitions and the fleet."""
    control = ctx.control_plane()
    control.require()
    state = control.read_phase()
    history = control.history(limit)
    members = control.alive(Thresholds.from_settings(ctx.settings).fleet_lease)
    control.close()
    doc: dict[str, Any] = {**state.as_dict(), "history": [h.as_dict() for h in history],
                           "fleet": [m.as_dict() for m in members]}
    lines = [f"phase {state.phase} (epoch {state.epoch})"]
    if state.pair:
        lines.append(f"  pair: {state.pair.source_url} -> {state.pair.target_url}")
    for kind in MemberKind:
        mine = [m for m in members if m.kind is kind]
        lines.append(f"  {kind}s alive: {len(mine)}" + "".join(
            f"\n    {m.side or '-'} {m.backend or ''} {m.host} pid {m.pid} mode {m.mode or '-'} "
            f"epoch {m.acked_epoch}" for m in mine))
    for h in history:
        lines.append(f"  {h.at:%Y-%m-%d %H:%M:%S} {h.kind} {h.frm} -> {h.to} epoch {h.epoch} "
                     f"by {h.who}@{h.host}" + (" FORCED" if h.forced else "")
                     + (f": {h.why}" if h.why else ""))
    emit(ctx, doc, "\n".join(lines))


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed((
            click.option("--dry-run", is_flag=True,
                         help="Evaluate and print the checks; change nothing."),
            click.option("--yes", is_flag=True, help="Do not ask for confirmation."),
            click.option("--force", is_flag=True,
                         help="Move despite refused checks (needs --why; recorded)."),
            click.option("--why", default=None, metavar="TEXT",
                         help="Why (recorded with the transition; required with --force)."))):
        f = option(f)
    return f


@phase.command("advance")
@click.option("--from", "frm", default=None, metavar="PHASE",
              help="Advance only from PHASE. Safe to re-run: when the phase is already the "
                   "one after PHASE (a first run finished, or was killed after its commit) "
                   "nothing moves again (exit 0); any other phase refuses (exit 2).")
@_options
@click.pass_obj
def advance_cmd(ctx: Context, frm: str | None, dry_run: bool, yes: bool, force: bool,
                why: str | None) -> None:
    """One step forward, if its preconditions hold (each refusal named; exit 3).

    Without --from, each run moves one step: re-running it after a run whose outcome you did
    not see (a killed terminal) can move a second step. Scripts and runbooks pass --from."""
    if frm is None:
        with _exclusive(ctx, "phase advance", dry_run):
            _move(ctx, advance, "advance", dry_run, yes, force, why)
        return
    start = _parse(frm)
    goal = advance(start).to  # refuses --from complete: nothing follows it

    def from_start(current: Phase) -> Transition:
        if current is not start:
            raise ConfigurationError(f"the phase is {current}, not {start} (--from {start}); "
                                     f"nothing moved")
        return advance(current)

    with _exclusive(ctx, "phase advance", dry_run):
        _move(ctx, from_start, "advance", dry_run, yes, force, why, goal=goal)


@phase.command("set")
@click.argument("to", metavar="PHASE")
@_options
@click.pass_obj
def set_cmd(ctx: Context, to: str, dry_run: bool, yes: bool, force: bool,
            why: str | None) -> None:
    """Move to PHASE: the next one, or an earlier one (a rollback)."""
    goal = _parse(to)
    with _exclusive(ctx, "phase set", dry_run):
        _move(ctx, lambda current: set_move(current, goal), "set", dry_run, yes, force, why,
              goal=goal)


@click.command()
@click.option("--to", "to", default=None, metavar="PHASE",
              help="Roll back to this earlier phase (default: the previous one).")
@click.option("--from", "frm", default=None, metavar="PHASE",
              help="Roll back only from PHASE (as `phase advance --from`). Safe to re-run: "
                   "when the phase is already the goal (a first run finished, or was killed "
                   "after its commit) nothing moves again and its move back is resumed (exit "
                   "0); any other phase refuses (exit 2).")
@_options
@click.pass_obj
def rollback(ctx: Context, to: str | None, frm: str | None, dry_run: bool, yes: bool,
             force: bool, why: str | None) -> None:
    """Step back one phase (or to --to PHASE). Out of rampdown or complete, the target's
    waiting jobs are moved back to the source once producers acknowledged the new epoch.
    Leaving complete needs --force --why.

    One phase command at a time: a rollback run while another phase command (a rollback's
    move back included) is under way is refused (exit 3), so two bare rollbacks never both
    step back. A bare rollback steps back from the phase it read; the move is refused (exit 3)
    if the phase moved on before it committed."""
    named = _parse(to) if to else None
    start = _parse(frm) if frm else None
    # --from: the goal is known before the phase is read (one back from it, or --to), so a
    # re-run finds the phase there and resumes instead of stepping back again.
    goal = named if start is None else rollback_move(start, named).to

    def build(current: Phase) -> Transition:
        if start is not None and current is not start:
            raise ConfigurationError(f"the phase is {current}, not {start} (--from {start}); "
                                     f"nothing moved")
        return rollback_move(current, named)

    with _exclusive(ctx, "rollback", dry_run):
        _move(ctx, build, "rollback", dry_run, yes, force, why, goal=goal)


@click.command()
@_options
@click.pass_obj
def complete(ctx: Context, dry_run: bool, yes: bool, force: bool, why: str | None) -> None:
    """Advance into complete (the point of no return): producers acknowledged the epoch, the
    source drained, verify clean. Safe to re-run: when the phase is already complete (a first
    run finished, or was killed after its commit) nothing moves again (exit 0)."""
    def into_complete(current: Phase) -> Transition:
        if current is not Phase.RAMPDOWN:
            raise ConfigurationError(f"complete follows rampdown; the phase is {current}")
        return advance(current)

    with _exclusive(ctx, "complete", dry_run):
        _move(ctx, into_complete, "advance", dry_run, yes, force, why, goal=Phase.COMPLETE)


@contextlib.contextmanager
def _exclusive(ctx: Context, command: str, dry_run: bool) -> Iterator[None]:
    """Hold the control plane's phase-change lock for the whole command (its move back
    included): a second phase command meanwhile is refused (ControlPlane.changing). A dry run
    changes nothing and takes no lock."""
    if dry_run:
        yield
        return
    control = ctx.control_plane()
    try:
        with control.changing(command):
            yield
    finally:
        control.close()


def _parse(name: str) -> Phase:
    return Phase.parse(name)  # a ConfigurationError (exit 2) names the phases


def _move(ctx: Context, build: Callable[[Phase], Transition], kind: str, dry_run: bool,
          yes: bool, force: bool, why: str | None, goal: Phase | None = None) -> None:
    """``goal``: the phase the command names (``set PHASE``, ``rollback --to PHASE``). When the
    phase is already there, the command is a re-run (the first run may have been killed after
    its commit): it finishes what that move left undone instead of failing."""
    if force and not (why and why.strip()):
        raise ConfigurationError("--force needs --why TEXT: a forced phase change is "
                                 "recorded with its reason")
    ctx.need("source", "target")
    assert ctx.source is not None and ctx.target is not None
    control = ctx.control_plane()
    try:
        control.require()
    except ConfigurationError as exc:
        _refuse(ctx, "phase change", [(Check.SCHEMA, str(exc))])
    registry = ctx.registry() if ctx.app else None
    with opened(ctx.source, ctx.target) as (source, target):
        sid, tid = stores.distinct(source, target, "change the phase")
        pair = Pair(sid.key, sid.url, tid.key, tid.url)
        state = control.read_phase()
        control.check_pair(state, pair)
        if goal is not None and goal is state.phase:
            if state.epoch > 0:  # heals a store left unmarked (a run killed before the write)
                _mark(control, source, target, pair, state.phase, state.epoch)
            doc, lines = _rerun(control, state, Preflight(
                control, source, target, ctx.source, ctx.target, registry,
                Thresholds.from_settings(ctx.settings)), force, dry_run)
            control.close()
            emit(ctx, doc, "\n".join(lines))
            if doc.get("left_on_target"):
                raise Refused(3)
            return
        move = build(state.phase)
        if move.moves_back and registry is None and not dry_run:
            raise ConfigurationError(f"{move.name} moves the target's waiting jobs back: "
                                     "pass --app MODULE:ATTR (the task registry)")
        preflight = Preflight(control, source, target, ctx.source, ctx.target, registry,
                              Thresholds.from_settings(ctx.settings))
        outcomes = preflight.evaluate(move, state.epoch)
        decision = decide(move, outcomes, force=force, why=why)
        doc = _document(decision, dry_run=dry_run, epoch=state.epoch,
                        passed={c: o.detail for c, o in outcomes.items() if o.passed})
        if dry_run or not decision.allowed:
            _report(ctx, doc, decision, dry_run,
                    _would_move_back(doc, source, target) if dry_run and move.moves_back
                    else ())
            return
        confirm(ctx, yes, f"Move the phase {move.name}"
                          + (" (FORCED past: " + ", ".join(c for c, _ in decision.refusals)
                             + ")" if decision.forced else "") + "?")
        faults.point("phase_checked")  # decided, nothing written: a kill here changes nothing
        if state.epoch == 0:  # the first move out of off: marked before it commits too, so a
            # run killed between the commit and the write below leaves no store unmarked
            _mark(control, source, target, pair, move.to, state.epoch + 1)
        new = control.transition(decision, why=why, pair=pair, kind=kind,
                                 expect_epoch=state.epoch)
        faults.point("phase_committed")  # moved; a move back not started: a re-run does it
        _mark(control, source, target, pair, new.phase, new.epoch)
        doc.update(phase=new.phase.value, epoch=new.epoch, moved=True)
        lines = [f"phase {move.frm} -> {new.phase} (epoch {new.epoch})"
                 + (" FORCED" if decision.forced else "")]
        if move.moves_back:
            assert registry is not None
            lines += _move_back(control, preflight, new.epoch, force, doc)
    control.close()
    emit(ctx, doc, "\n".join(lines))
    if doc.get("left_on_target"):
        raise Refused(3)


def _mark(control: ControlPlane, source: QueueBackend, target: QueueBackend, pair: Pair,
          phase: Phase, epoch: int) -> None:
    """Write the cut-over marker into both stores of the pair (cutover.marker): a cutover
    worker on either without the control plane then refuses to start."""
    mark = marker.make(control.url, control.schema, pair.source_key, pair.source_url,
                       pair.target_key, pair.target_url, phase.value, epoch,
                       control_key=control.identity())
    for backend in (source, target):
        marker.write(backend, mark)


def _rerun(control: ControlPlane, state: PhaseState, preflight: Preflight, force: bool,
           dry_run: bool) -> tuple[dict[str, Any], list[str]]:
    """The phase is already where the command asks. If the transition that brought it there was
    a rollback that moves the target's waiting jobs back, (re)run that move back: the first run
    may have died after its commit, before or during its drain (the drain resumes). Otherwise
    there is nothing to do."""
    doc: dict[str, Any] = {"phase": state.phase.value, "epoch": state.epoch, "moved": False,
                           "rerun": True, "dry_run": dry_run}
    lines = [f"phase {state.phase} (epoch {state.epoch}) already"]
    last = next(iter(control.history(1)), None)
    if (last is None or last.to is not state.phase or last.epoch != state.epoch
            or last.frm.step <= state.phase.step
            or not rollback_move(last.frm, state.phase).moves_back):
        return doc, [*lines, "nothing to do"]
    if preflight.registry is None:
        raise ConfigurationError(f"the rollback {last.frm} -> {state.phase} moves the target's "
                                 "waiting jobs back: pass --app MODULE:ATTR (the task registry)")
    if dry_run:
        return doc, [*lines, f"rollback {last.frm} -> {state.phase}:",
                     *_would_move_back(doc, preflight.source, preflight.target)]
    return doc, lines + _move_back(control, preflight, state.epoch, force, doc)


def _document(decision: Decision, *, dry_run: bool, epoch: int,
              passed: dict[Check, str] | None = None) -> dict[str, Any]:
    """The decision as a document; ``passed``: the details of the checks that passed."""
    move = decision.transition
    refused = dict(decision.refusals)
    passed = passed or {}
    return {"from": move.frm.value, "to": move.to.value, "epoch": epoch,
            "rollback": move.rollback, "dry_run": dry_run, "allowed": decision.allowed,
            "forced": decision.forced, "moves_back": move.moves_back,
            "switches_writes": move.switches_writes,
            "checks": [{"check": str(c), "passed": c not in refused,
                        "detail": refused.get(c, passed.get(c, ""))} for c in move.checks],
            "refusals": [{"check": str(c), "detail": d} for c, d in decision.refusals]}


def _report(ctx: Context, doc: dict[str, Any], decision: Decision, dry_run: bool,
            notes: Sequence[str] = ()) -> None:
    move = decision.transition
    verdict = ("would move" if decision.allowed else "would be REFUSED") if dry_run else "REFUSED"
    lines = [f"{move.name}: {verdict}" + (" (forced)" if decision.forced else "")]
    for entry in doc["checks"]:
        lines.append(f"  {'ok' if entry['passed'] else 'REFUSED'}  {entry['check']}"
                     + (f": {entry['detail']}" if entry["detail"] else ""))
    for check, detail in decision.refusals:
        if check not in move.checks:
            lines.append(f"  REFUSED  {check}: {detail}")
    lines += notes
    emit(ctx, doc, "\n".join(lines))
    if not decision.allowed:
        raise Refused(3)


def _refuse(ctx: Context, what: str, refusals: list[tuple[Check, str]]) -> None:
    doc = {"allowed": False, "refusals": [{"check": str(c), "detail": d} for c, d in refusals]}
    emit(ctx, doc, f"{what}: REFUSED\n" + "\n".join(f"  REFUSED  {c}: {d}" for c, d in refusals))
    raise Refused(3)


def _move_back(control: ControlPlane, preflight: Preflight, epoch: int,
               force: bool, doc: dict[str, Any]) -> list[str]:
    """After a rollback out of rampdown/complete: once producers acknowledged ``epoch`` (they
    stopped writing the target only), drain the target's waiting jobs back to the source."""
    acked = preflight.producers_acknowledged(epoch)
    doc["producers_acknowledged"] = {"passed": acked.passed, "detail": acked.detail}
    if not acked.passed and not force:
        doc["left_on_target"] = True
        return [f"jobs NOT moved back yet: {acked.detail}. Once they have, move them with "
                f"{_reverse_drain(preflight.source, preflight.target)}"]
    registry = preflight.registry
    assert registry is not None
    started = time.monotonic()
    report = Drain(preflight.target, preflight.target_url, preflight.source,
                   preflight.source_url, control, registry,
                   DrainOptions(wait_running=MOVE_BACK_WAIT_RUNNING)).run()
    control.event("rollback_drain", {"epoch": epoch, "moved": report.moved,
                                     "left": report.left_count, "run_id": report.run_id,
                                     "forced_ack": not acked.passed})
    doc["moved_back"] = report.as_dict()
    doc["left_on_target"] = bool(report.left_count or report.lost)
    return [f"moved {report.moved} waiting job(s) back to the source in "
            f"{time.monotonic() - started:.1f} s [run {report.run_id}]"
            + (f"; left on the target: {report.left_count} (see "
               f"{_reverse_drain(preflight.source, preflight.target, '--dry-run')})"
               if report.left_count else "")]


#: The states a move back takes off the target (waiting for a worker; not failed, not held).
_WAITING = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.DEFERRED})


def _reverse_drain(source: QueueBackend, target: QueueBackend, *extra: str) -> str:
    """The drain command that moves the target's jobs back to the source (the sides swapped;
    the URLs as the backends show them: redacted)."""
    return " ".join(["`cutover drain", *extra, "--source", target.url, "--target",
                     source.url]) + "`"


def _would_move_back(doc: dict[str, Any], source: QueueBackend,
                     target: QueueBackend) -> list[str]:
    """A dry run of a move that moves the target's waiting jobs back: how many would move, and
    the command that lists them (its own dry run, each job classified)."""
    waiting = sum(n for per in target.counts().values() for state, n in per.items()
                  if state in _WAITING)
    doc["would_move_back"] = waiting
    return [f"would move back {waiting} waiting job(s) from the target ({target.url}) to the "
            f"source ({source.url}); list them with "
            f"{_reverse_drain(source, target, '--dry-run')}"]

