"""The cut-over commands: init, status, audit, drain, verify. Parse, call, print."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from cutover import adapters, stores
from cutover.audit import Classifier, JobClass, audit
from cutover.backend import QueueBackend, StoreIdentity
from cutover.cli import Context, cli, emit, fail
from cutover.control import ControlPlane, backend_key
from cutover.drain import Drain, DrainOptions
from cutover.errors import ConfigurationError, CutoverError
from cutover.held import drain_owner
from cutover.record import SUMMARY_STATES
from cutover.verify import verify as run_verify

log = logging.getLogger("cutover.cli")
stderr = Console(stderr=True)


def console() -> Console:
    """Where tables go: the terminal's width on a terminal; elsewhere (a CI log, a pipe, a file)
    as wide as the content, so no cell is cut to fit 80 columns."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000, soft_wrap=True)

CLASSES = [c.value for c in JobClass]


@contextlib.contextmanager
def opened(*urls: str) -> Iterator[list[QueueBackend]]:
    backends: list[QueueBackend] = []
    try:
        for url in urls:
            backends.append(adapters.open_backend(url))
        yield backends
    finally:
        for backend in backends:
            with contextlib.suppress(Exception):
                backend.close()


def confirm(ctx: Context, yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigurationError(f"{question} Refusing without a terminal to ask: pass --yes")
    click.confirm(question, abort=True)


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Say what would be created; change nothing.")
@click.pass_obj
def init(ctx: Context, yes: bool, dry_run: bool) -> None:
    """Create the control schema (ledger, phase, runs) and Procrastinate's schema when absent.

    Idempotent and safe to run from many processes at once. The control schema is named by
    CUTOVER_SCHEMA (default: cutover) in the PostgreSQL side's database (or --control).
    """
    try:
        control = ctx.control_plane()
        if dry_run:
            present = control.initialized()
            emit(ctx, {"control": repr(control), "exists": present, "dry_run": True},
                 f"{control!r}: {'exists already' if present else 'would be created'}")
            return
        confirm(ctx, yes, f"Create the control schema in {control!r}?")
        created = control.init()
        pg = [u for u in (ctx.source, ctx.target) if u and adapters.split(u)[0] ==
              "procrastinate"]
        with opened(*pg):  # opening a procrastinate backend applies its schema when absent
            pass
        control.close()
    except CutoverError as exc:
        fail(exc)
    emit(ctx, {"control": repr(control), "created": created},
         f"{'created' if created else 'already there'}: {control!r}")


def _counts(backend: QueueBackend) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for queue, per in sorted(backend.counts().items()):
        out[queue] = {name: sum(per[s] for s in states) for name, states in
                      SUMMARY_STATES.items()}
    return out


@cli.command()
@click.option("--watch", type=click.FloatRange(min=0.5), default=None, metavar="SECONDS",
              help="Refresh every SECONDS until interrupted.")
@click.pass_obj
def status(ctx: Context, watch: float | None) -> None:
    """The phase, per backend and queue the jobs waiting / scheduled / active / completed /
    failed, and the ledger's summary."""
    try:
        urls = [u for u in (ctx.source, ctx.target) if u]
        if not urls:
            raise ConfigurationError("status needs --source and/or --target")
        with opened(*urls) as backends:
            while True:
                doc = _status(ctx, dict(zip(urls, backends, strict=True)))
                if ctx.json:
                    click.echo(json.dumps(doc, default=str, indent=2))
                else:
                    _print_status(doc)
                if watch is None:
                    return
                time.sleep(watch)
    except CutoverError as exc:
        fail(exc)
    except KeyboardInterrupt:
        return


def _status(ctx: Context, backends: dict[str, QueueBackend]) -> dict[str, Any]:
    doc: dict[str, Any] = {"at": dt.datetime.now(dt.UTC).isoformat(), "backends": {}}
    for url, backend in backends.items():
        doc["backends"][backend_key(url)] = _counts(backend)
    try:
        control = ctx.control_plane()
        if control.initialized():
            doc["phase"] = control.phase()
            doc["ledger"] = control.summary()
            doc["failures"] = control.failures_summary()
        else:
            doc["phase"] = {"phase": "off", "epoch": 0, "note": "no control schema (cutover init)"}
        control.close()
    except ConfigurationError as exc:
        doc["phase"] = {"phase": "off", "epoch": 0, "note": str(exc)}
    return doc


def _print_status(doc: dict[str, Any]) -> None:
    out = console()
    phase = doc.get("phase", {})
    out.print(f"phase: [bold]{phase.get('phase')}[/bold] (epoch {phase.get('epoch')})"
              + (f" - {phase['note']}" if phase.get("note") else ""))
    table = Table()
    for col in ("backend", "queue", *SUMMARY_STATES):
        table.add_column(col, justify="right" if col in SUMMARY_STATES else "left")
    for key, queues in doc["backends"].items():
        for queue, per in queues.items():
            table.add_row(key, queue, *(str(per[s]) for s in SUMMARY_STATES))
        if not queues:
            table.add_row(key, "(none)", *("0" for _ in SUMMARY_STATES))
    out.print(table)
    for row in doc.get("ledger", []):
        out.print(f"ledger: {row['source']} -> {row['target']}: {row['state']} {row['jobs']}")
    for cls, n in doc.get("failures", {}).items():
        out.print(f"failure records: {cls} {n}")


@cli.command(name="audit")
@click.option("--queue", "-q", "queues", multiple=True, help="Only these queues (repeatable).")
@click.option("--allow", "allow", multiple=True, type=click.Choice(CLASSES),
              help="Do not exit 3 for this class of jobs left behind (repeatable).")
@click.option("--include-failed", is_flag=True, help="Count failed jobs as movable.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full JSON report here.")
@click.pass_obj
def audit_cmd(ctx: Context, queues: tuple[str, ...], allow: tuple[str, ...],
              include_failed: bool, report: Path | None) -> None:
    """Inventory the source in every state, and classify each job before anything moves:
    movable; lossy (moves, but a named feature does not); in_place (running, waiting on a
    dependency, orphaned, misplaced, held by another drain); quarantined; unknown_task (with a
    suggestion); unsupported (args the codec cannot carry, or ids, names, values the --target
    or the ledger cannot hold: give --target to check its limits); failed; history (finished,
    canceled). The drain and `drain --dry-run` classify with the same code.

    Exits 3 when something would be left behind, unless --allow CLASS.
    """
    try:
        ctx.need("source")
        assert ctx.source is not None
        registry = ctx.registry()
        to_procrastinate = False
        urls = [ctx.source] + ([ctx.target] if ctx.target else [])
        with opened(*urls) as backends:
            # The drain's own classification: the target's limits, and the drain's owner (jobs
            # another drain holds stay in place). Without --target: the source's capabilities
            # and the ledger's limits only.
            target = backends[1] if len(backends) > 1 else None
            owner = (drain_owner(stores.distinct(backends[0], target, "audit")[1].key)
                     if target is not None else None)
            stores.require_queues(backends[0], queues)
            to_procrastinate = target is not None and target.name == "procrastinate"
            classifier = Classifier(
                registry, target, capabilities=None if target else backends[0].capabilities,
                include_failed=include_failed,
                owner=owner)
            result = audit(backends[0], classifier, queues=list(queues) or None)
    except CutoverError as exc:
        fail(exc)
    doc = {"source": backend_key(ctx.source), **result.as_dict(),
           "left_behind": result.left_behind(allow)}
    if not to_procrastinate:  # only a procrastinate target has a plain worker that misreads
        doc.pop("plain_procrastinate_misreads")
    if report is not None:
        report.write_text(json.dumps(doc, default=str, indent=2))
    if ctx.json:
        click.echo(json.dumps(doc, default=str, indent=2))
    else:
        _print_audit(doc)
    if doc["left_behind"]:
        raise click.exceptions.Exit(3)


def _print_audit(doc: dict[str, Any]) -> None:
    out = console()
    out.print(f"audit of {doc['source']}: {doc['total']} jobs")
    for label in ("queue", "task"):
        table = Table(title=f"jobs by {label} and class")
        table.add_column(label)
        for cls in CLASSES:
            table.add_column(cls, justify="right")
        for name, per in doc[f"by_{label}"].items():
            table.add_row(name, *(str(per.get(c, 0)) for c in CLASSES))
        out.print(table)
    if doc["orphans"]:
        out.print(f"orphans (status queued, in no list): {len(doc['orphans'])}: "
                  + ", ".join(doc["orphans"][:10]))
    for cls, jobs in doc["jobs"].items():
        out.print(f"[bold]{cls}[/bold]: {len(jobs)}")
        for job in jobs[:10]:
            out.print(f"  {job['id']} ({job['task']}, queue {job['queue']}): {job['reason']}")
        if len(jobs) > 10:
            out.print(f"  ... {len(jobs) - 10} more (--json or --report for all)")
    misreads = doc.get("plain_procrastinate_misreads")
    if misreads:
        out.print("[bold]a plain procrastinate App would misread[/bold] (run the target with "
                  "cutover_procrastinate.make_app, which reads them right; information only):")
        for task, reasons in misreads.items():
            out.print(f"  {task}: " + "; ".join(f"{r} ({n} jobs)" for r, n in reasons.items()))
    if doc["left_behind"]:
        out.print("left behind by a drain: " + ", ".join(f"{c} {n}" for c, n in
                                                         doc["left_behind"].items()))


class _Progress:
    """A bar with rate and ETA on a terminal; a plain line every few seconds elsewhere."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._bar: Progress | None = None
        self._task: Any = None
        self._last = 0.0
        self._start = time.monotonic()

    def __enter__(self) -> _Progress:
        if self.tty:
            self._bar = Progress(TextColumn("draining"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.completed} jobs, {task.fields[rate]}/s"),
                                 TimeRemainingColumn(), console=stderr)
            self._bar.__enter__()
            self._task = self._bar.add_task("drain", total=None, rate="0")
        return self

    def __call__(self, moved: int, total: int) -> None:
        rate = moved / max(time.monotonic() - self._start, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=moved, total=total, rate=f"{rate:,.0f}")
        elif time.monotonic() - self._last >= 2.0:
            self._last = time.monotonic()
            log.info("drain progress: %d of ~%d jobs moved (%.0f jobs/s)", moved, total, rate)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@cli.command()
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
@click.option("--workers", "-w", type=click.IntRange(1, 64), default=1, show_default=True,
              envvar="CUTOVER_DRAIN_WORKERS",
              help="Processes that split the jobs between them, each with its own "
                   "connections (faster on a machine with cores to spare). They read the "
                   "source in step, window by window: jobs keep the source's order to within "
                   "a few batches; 1 keeps it exactly. [env CUTOVER_DRAIN_WORKERS]")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def drain(ctx: Context, queues: tuple[str, ...], batch_size: int, rate: float | None,
          include_failed: bool, wait_running: float, send: str | None, workers: int,
          dry_run: bool, yes: bool) -> None:
    """Move every movable job from --source to --target, with its ledger rows.

    A batch is taken on the source first (no source worker can start it), put on the target
    with its ledger rows, then released from the source. Killed at any point, the next run
    finishes the work. Running jobs are never moved. Swap --source and --target to move jobs
    back.

    Exit 0 when everything was moved; 3 when jobs were left in place (their classes and ids are
    listed) or the drain was stopped.
    """
    try:
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
                               dry_run=dry_run, workers=workers)
        with opened(ctx.source, ctx.target) as (source, target):
            if not dry_run:
                confirm(ctx, yes, f"Move jobs from {source.url} to {target.url}?")
            with _Progress() as progress:
                job = Drain(source, ctx.source, target, ctx.target, control, registry, options,
                            progress=progress)
                report = job.run()
        control.close()
    except CutoverError as exc:
        fail(exc)
    doc = report.as_dict()
    if dry_run:
        lines = ["plan (nothing changed): " + ", ".join(f"{k} {v}" for k, v in
                                                         sorted(report.planned.items()))]
        for cls, jobs in report.plan_jobs.items():
            lines.append(f"would leave {cls} {len(jobs)}: " + ", ".join(
                f"{j['id']!r} ({j['reason']})" for j in jobs[:20])
                + (" ..." if len(jobs) > 20 else ""))
        emit(ctx, {"dry_run": True, "plan": report.planned, "jobs": report.plan_jobs},
             "\n".join(lines))
        return
    lines = [f"moved {report.moved} jobs in {report.seconds:.1f} s ({report.rate:,.0f} jobs/s)"
             + (f"; finished {report.recovered} interrupted moves" if report.recovered else "")
             + f" [run {report.run_id}]"]
    for cls, jobs in report.left.items():
        lines.append(f"left in place: {cls} {len(jobs)}: "
                     + ", ".join(f"{j['id']!r} ({j['reason']})" for j in jobs[:20])
                     + (" ..." if len(jobs) > 20 else ""))
    if report.running:
        lines.append(f"still running on the source: {len(report.running)}: "
                     + ", ".join(report.running[:20]))
    if report.lost:
        lines.append(f"LOST (ledger says moving, neither backend has it): {report.lost}")
    if report.stopped:
        lines.append("stopped by the operator")
    emit(ctx, doc, "\n".join(lines))
    if report.lost:
        raise click.exceptions.Exit(1)
    if report.left_count or report.stopped:
        raise click.exceptions.Exit(3)


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


@cli.command()
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the full JSON report here (--json prints it "
                                 "on stdout; nothing is written unless asked).")
@click.pass_obj
def verify(ctx: Context, report_path: Path | None) -> None:
    """Prove that the jobs the ledger says moved from --source to --target are on the target,
    unaltered, and nowhere else. Lists every lost, duplicated, mismatched (with the fields) and
    pending job by id. A moved job the target has since deleted counts as "finished, since
    deleted" only when the target's own records say it ended first; otherwise it is lost.

    Exit 0 only when clean; 1 when something was lost, duplicated or altered; 3 when moves are
    still in flight (re-run the drain first), or when nothing was ever moved from --source to
    --target (wrong URL, database number, or the two swapped).
    """
    try:
        ctx.need("source", "target")
        assert ctx.source is not None and ctx.target is not None
        control = ctx.control_plane()
        control.require()
        with opened(ctx.source, ctx.target) as (source, target):
            result = run_verify(source, ctx.source, target, ctx.target, control)
        control.close()
    except CutoverError as exc:
        fail(exc)
    doc = result.as_dict()
    if report_path is not None:
        report_path.write_text(json.dumps(doc, default=str, indent=2))
        doc["report"] = str(report_path)
    emit(ctx, doc, result.summary()
         + (f"\n  report: {report_path}" if report_path is not None else ""))
    if result.failed:
        raise click.exceptions.Exit(1)
    if not result.clean:
        raise click.exceptions.Exit(3)
