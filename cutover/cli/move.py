"""Commands that move jobs: ``cutover drain`` (and its --signal) and ``cutover release``."""

from __future__ import annotations

import click

from cutover import stores
from cutover.audit import LEFT_BEHIND, JobClass
from cutover.backend import QueueBackend, StoreIdentity
from cutover.cli.context import Context, DrainProgress, confirm, emit, from_settings, opened
from cutover.control import ControlPlane
from cutover.drain import Drain, DrainOptions
from cutover.errors import ConfigurationError, PreconditionError
from cutover.held import release as run_release
from cutover.phases import Side, drain_refusal

#: The classes a drain can leave in place (what ``--allow`` takes).
ALLOWABLE = sorted(c.value for c in LEFT_BEHIND)
#: Per class, the reasons listed (the most frequent first); a few ids each.
SHOWN_REASONS = 8
SHOWN_IDS = 3


@click.command()
@click.option("--queue", "-q", "queues", multiple=True, help="Only these queues (repeatable).")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="Jobs per batch (one take / put / release each).")
@click.option("--rate", type=click.FloatRange(min=0.1), default=None, metavar="JOBS_PER_S",
              help="Throttle: move at most this many jobs per second.")
@click.option("--include-failed", is_flag=True, help="Move failed jobs too (as failed).")
@click.option("--wait-running", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              help="Wait up to SECONDS for running jobs to finish (jobs they retry then move).")
@click.option("--signal", "send", type=click.Choice(["pause", "resume", "stop"]), default=None,
              help="Flip the switch of the drain running between --source and --target, "
                   "from another shell, and exit.")
@click.option("--workers", "-w", type=click.IntRange(1, 64),
              help=from_settings("drain_workers", "Processes that split the jobs between them, "
                                 "each with its own connections (faster on a machine with "
                                 "cores to spare). They read the source in step, window by "
                                 "window: jobs keep the source's order to within a few "
                                 "batches; 1 keeps it exactly."))
@click.option("--allow", "allow", multiple=True, type=click.Choice(ALLOWABLE),
              help="Do not exit 3 for jobs of this class left in place (repeatable; as "
                   "audit's): --allow failed once every job left is one that failed for good.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def drain(ctx: Context, queues: tuple[str, ...], batch_size: int, rate: float | None,
          include_failed: bool, wait_running: float, send: str | None, workers: int | None,
          allow: tuple[str, ...], dry_run: bool, yes: bool) -> None:
    """Move every movable job from --source to --target, with its ledger rows.

    A batch is taken on the source first (no source worker can start it), put on the target
    with its ledger rows, then released from the source. Killed at any point, the next run
    finishes the work. Running jobs are never moved. Swap --source and --target to move jobs
    back.

    Exit 0 when everything was moved; 3 when jobs were left in place (listed by class and
    reason, with a count and a few ids; --json lists every id), unless each of their classes
    is --allow'ed (running jobs are in_place), or when the drain was stopped.
    """
    ctx.need("source", "target")
    assert ctx.source is not None and ctx.target is not None
    control = ctx.control_plane()
    control.require()
    if send is not None:
        with opened(ctx.source, ctx.target) as (source, target):
            runs = _signal(control, *stores.distinct(source, target, "signal a drain"),
                           send)
        emit(ctx, {"signal": send, "runs": runs}, f"{send}: {', '.join(runs)}")
        return
    registry = ctx.registry()
    options = DrainOptions(queues=list(queues) or None, batch_size=batch_size, rate=rate,
                           include_failed=include_failed, wait_running=wait_running,
                           dry_run=dry_run,
                           workers=ctx.settings.with_options(drain_workers=workers).drain_workers)
    with opened(ctx.source, ctx.target) as (source, target):
        if not dry_run:
            _phase_allows(control, source, target)
            confirm(ctx, yes, f"Move jobs from {source.url} to {target.url}?")
        with DrainProgress() as progress:
            job = Drain(source, ctx.source, target, ctx.target, control, registry, options,
                        progress=progress)
            report = job.run()
    control.close()
    doc = report.as_dict()
    if dry_run:
        lines = ["plan (nothing changed): " + ", ".join(f"{k} {v}" for k, v in
                                                         sorted(report.planned.items()))]
        lines += left_lines("would leave", report.plan_jobs)
        emit(ctx, {"dry_run": True, "plan": report.planned, "jobs": report.plan_jobs},
             "\n".join(lines))
        return
    lines = [f"moved {report.moved} jobs in {report.seconds:.1f} s ({report.rate:,.0f} jobs/s)"
             + (f"; finished {report.recovered} interrupted moves" if report.recovered else "")
             + f" [run {report.run_id}]"]
    lines += left_lines("left in place:", report.left)
    if report.running:
        lines.append(f"still running on the source: {len(report.running)}: "
                     + _few(report.running))
    if report.lost:
        lines.append(f"LOST (ledger says moving, neither backend has it): {len(report.lost)}: "
                     + _few(report.lost))
    if report.stopped:
        lines.append("stopped by the operator")
    emit(ctx, doc, "\n".join(lines))
    if report.lost:
        raise click.exceptions.Exit(1)
    refused = {c for c, jobs in report.left.items() if jobs} | (
        {JobClass.IN_PLACE.value} if report.running else set())
    if refused - set(allow) or report.stopped:
        raise click.exceptions.Exit(3)


def _gist(reason: str) -> str:
    """One short line of a reason: a traceback's last line (the exception), else its first."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()] or ["-"]
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= 120 else line[:117] + "..."


def _few(ids: list[str]) -> str:
    shown = [repr(i) if len(i) <= 60 else repr(i[:57]) + "..." for i in ids[:SHOWN_IDS]]
    return ", ".join(shown) + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS
                               else "")


def left_lines(verb: str, left: dict[str, list[dict[str, str]]]) -> list[str]:
    """Jobs left in place as text: a line per class, then a line per reason with its count
    and a few ids (never one line of thousands of characters: --json keeps every id)."""
    lines: list[str] = []
    for cls, jobs in left.items():
        by_reason: dict[str, list[str]] = {}
        for job in jobs:
            by_reason.setdefault(_gist(job["reason"]), []).append(job["id"])
        lines.append(f"{verb} {cls} {len(jobs)}")
        ranked = sorted(by_reason.items(), key=lambda item: -len(item[1]))
        for reason, ids in ranked[:SHOWN_REASONS]:
            lines.append(f"  {len(ids)} x {reason}: {_few(ids)}")
        if len(ranked) > SHOWN_REASONS:
            rest = sum(len(ids) for _, ids in ranked[SHOWN_REASONS:])
            lines.append(f"  ... {len(ranked) - SHOWN_REASONS} more reason(s), {rest} job(s) "
                         "(--json lists every job)")
    return lines


def _phase_allows(control: ControlPlane, source: QueueBackend, target: QueueBackend) -> None:
    """Refuse (exit 3, naming the command to use) a drain into a side of the staged cut-over
    whose workers would dry-run or never run what it moves (cutover.phases.drain_refusal)."""
    state = control.read_phase()
    if state.pair is None:
        return
    key = target.identity().key
    into = {state.pair.target_key: Side.TARGET, state.pair.source_key: Side.SOURCE}.get(key)
    why = None if into is None else drain_refusal(state.phase, state.epoch, into, source.url,
                                                  target.url)
    if why is not None:
        raise PreconditionError(f"drain refused: {why}")


def _signal(control: ControlPlane, source: StoreIdentity, target: StoreIdentity,
            send: str) -> list[str]:
    """Flip the switch of the drain running between two stores; say so when none is."""
    if control.lock_pair(source.key, target.key):
        # Nobody holds the pair's lock: no drain process is alive, whatever the runs say.
        try:
            stale = control.abandon_runs(source.key, target.key)
        finally:
            control.unlock_pair(source.key, target.key)
        if stale:
            raise ConfigurationError(
                f"no drain is running between {source.url} and {target.url}: run(s) "
                f"{', '.join(stale)} were recorded as running, but their process is gone "
                "(killed?); marked interrupted now. The next drain of this pair finishes "
                "what they left under way; `cutover release` gives their held jobs back")
        raise ConfigurationError(f"no drain is running between {source.url} and {target.url}")
    value = {"pause": "pause", "resume": "run", "stop": "stop"}[send]
    runs = control.set_switch(source.key, target.key, value)
    if not runs:
        raise ConfigurationError(f"no drain is running between {source.url} and {target.url} "
                                 "(a verify or release holds the pair)")
    return runs


@click.command()
@click.option("--run", "run_id", default=None, metavar="RUN",
              help="Give back the jobs held for this drain run's pair (its run id, as the "
                   "drain prints it: [run drain-...]).")
@click.option("--all-stale", is_flag=True,
              help="Give back every job on --source held by no running drain.")
@click.option("--dry-run", is_flag=True, help="List what would be given back; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def release(ctx: Context, run_id: str | None, all_stale: bool, dry_run: bool,
            yes: bool) -> None:
    """Give jobs a drain holds on --source back to where it took them from (queue list,
    scheduled or deferred registry), so the source's workers run them again.

    A drain holds the jobs it moves; killed, it leaves them held until the next drain of the
    same pair moves them. Use this when there will be no such drain. Refused (exit 3) while
    that drain runs. A job the ledger says was put on the target is kept (the drain of that
    pair finishes it); give --target to check the target for jobs caught mid-put.

    Exit 0 when every selected job was given back; 3 when some were kept (named, with why).
    """
    if (run_id is None) == (not all_stale):
        raise ConfigurationError("say which held jobs: --run RUN or --all-stale")
    ctx.need("source")
    assert ctx.source is not None
    control = ctx.control_plane()
    control.require()
    urls = [ctx.source] + ([ctx.target] if ctx.target else [])
    with opened(*urls) as backends:
        if not dry_run:
            confirm(ctx, yes, f"Give back held jobs on {backends[0].url}?")
        # The runs, the ledger and the holders of held jobs name stores by identity.
        target_key = (stores.distinct(backends[0], backends[1], "release")[1].key
                      if ctx.target else None)
        report = run_release(
            backends[0], backends[0].identity().key, control, run_id=run_id,
            target=backends[1] if ctx.target else None, target_key=target_key,
            dry_run=dry_run)
    control.close()
    verb = "would give back" if dry_run else "gave back"
    lines = [f"{verb} {len(report.released)} held job(s)"
             + (": " + ", ".join(repr(j["id"]) for j in report.released[:20])
                if report.released else "")]
    for job in report.kept:
        lines.append(f"kept held: {job['id']!r}: {job['reason']}")
    emit(ctx, report.as_dict(), "\n".join(lines))
    if report.kept:
        raise click.exceptions.Exit(3)
