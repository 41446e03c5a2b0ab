"""Read-only commands: ``cutover status`` and ``cutover audit``."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table
from rich.text import Text

from cutover import fleet_metrics, metrics, stores
from cutover.audit import Classifier, JobClass, audit
from cutover.backend import QueueBackend
from cutover.cli.context import Context, console, opened
from cutover.control import ControlPlane, backend_key
from cutover.errors import ConfigurationError
from cutover.held import drain_owner
from cutover.phases import Mode, Phase, Side, mode
from cutover.preflight import Preflight, Thresholds
from cutover.record import SUMMARY_STATES, JobState

CLASSES = [c.value for c in JobClass]


def _counts(backend: QueueBackend) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for queue, per in sorted(backend.counts().items()):
        out[queue] = {name: sum(per[s] for s in states) for name, states in
                      SUMMARY_STATES.items()}
    return out


@click.command()
@click.option("--watch", type=click.FloatRange(min=0.5), default=None, metavar="SECONDS",
              help="Refresh every SECONDS until interrupted.")
@click.option("--prometheus", is_flag=True,
              help="Print only the merged metrics as Prometheus text exposition.")
@click.option("--metrics-from", "endpoints", multiple=True, metavar="URL",
              help="Also merge the metrics a worker serves at URL (http://HOST:PORT/metrics of "
                   "its --metrics-port; repeatable) [env CUTOVER_METRICS_FROM, space-separated; "
                   "the options given replace it].")
@click.pass_obj
def status(ctx: Context, watch: float | None, prometheus: bool,
           endpoints: tuple[str, ...]) -> None:
    """The phase, per backend and queue the jobs waiting / scheduled / deferred / held /
    active / completed / failed / canceled, the ledger's summary, and the metrics per backend
    (enqueue latency p50/p99, errors, consistency rate, duplicates skipped, in flight) merged
    over the fleet, when anything was counted. A --metrics-from URL's user:password is sent as
    HTTP basic auth."""
    endpoints = endpoints or ctx.settings.metrics_from
    if prometheus:
        merged, _ = fleet_metrics.gather(_fleet(ctx), endpoints)
        click.echo(metrics.exposition(merged), nl=False)
        return
    urls = [u for u in (ctx.source, ctx.target) if u]
    if not urls:
        raise ConfigurationError("status needs --source and/or --target")
    try:
        with opened(*urls) as backends:
            while True:
                doc, fleet = _status(ctx, dict(zip(urls, backends, strict=True)))
                merged, sources = fleet_metrics.gather(fleet, endpoints)
                doc["metrics"] = {"sources": sources, "backends": metrics.summary(merged)}
                if ctx.json:
                    click.echo(json.dumps(doc, default=str, indent=2))
                else:
                    _print_status(doc)
                if watch is None:
                    return
                time.sleep(watch)
    except KeyboardInterrupt:
        return


def _fleet(ctx: Context) -> list[dict[str, Any]]:
    """The metrics snapshots of the living fleet members; none without a control plane."""
    try:
        control = ctx.control_plane()
    except ConfigurationError:
        return []
    try:
        if not control.initialized():
            return []
        control.require()
        return fleet_metrics.fleet_snapshots(control)
    except ConfigurationError:
        return []
    finally:
        control.close()


def _status(ctx: Context, backends: dict[str, QueueBackend]
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The status document, and the fleet members' metrics snapshots (merged by the caller)."""
    doc: dict[str, Any] = {"at": dt.datetime.now(dt.UTC).isoformat(), "backends": {}}
    fleet: list[dict[str, Any]] = []
    for url, backend in backends.items():
        doc["backends"][backend_key(url)] = _counts(backend)
    try:
        control = ctx.control_plane()
        if control.initialized():
            control.require()  # a schema of another version: the note says what to do
            doc["phase"] = control.phase()
            doc["ledger"] = control.summary()
            doc["failures"] = control.failures_summary()
            fleet = fleet_metrics.fleet_snapshots(control)
            warnings = _bypass_warnings(ctx, control, backends) + _stranded_warnings(
                ctx, control, backends)
            if warnings:
                doc["warnings"] = warnings
        else:
            doc["phase"] = {"phase": "off", "epoch": 0, "note": "no control schema (cutover init)"}
        control.close()
    except ConfigurationError as exc:
        doc["phase"] = {"phase": "off", "epoch": 0, "note": str(exc)}
    return doc, fleet


def _bypass_warnings(ctx: Context, control: ControlPlane,
                     backends: dict[str, QueueBackend]) -> list[str]:
    """Native workers (RQ's own, procrastinate's own) alive where they would run jobs without
    the fence or the dry run in the current phase: the check ``phase advance`` refuses on
    (NO_NATIVE_BYPASS), read again, since one may have started after the advance."""
    phase = control.read_phase().phase
    if phase is Phase.OFF or not (ctx.source in backends and ctx.target in backends):
        return []
    assert ctx.source is not None and ctx.target is not None
    outcome = Preflight(control, backends[ctx.source], backends[ctx.target], ctx.source,
                        ctx.target, None, Thresholds.from_settings(ctx.settings)
                        ).no_native_bypass(phase)
    return [] if outcome.passed else [f"native worker bypassing the fence: {w}"
                                      for w in outcome.detail.split("; ")]


def _stranded_warnings(ctx: Context, control: ControlPlane,
                       backends: dict[str, QueueBackend]) -> list[str]:
    """Jobs waiting on a side whose cutover workers are idle in the current phase (the source
    in complete, the target in off after a rollback): nothing will run them. A producer still
    writing there (no CUTOVER_TARGET, or a CUTOVER_CONTROL without the control schema, read as
    phase off) got an id for each."""
    state = control.read_phase()
    if state.epoch == 0:
        return []  # no staged cut-over ever started: every side is a plain worker's
    found: list[str] = []
    for side, url in ((Side.SOURCE, ctx.source), (Side.TARGET, ctx.target)):
        if url is None or url not in backends or mode(state.phase, side) is not Mode.IDLE:
            continue
        waiting = sum(n for per in backends[url].counts().values()
                      for s, n in per.items() if s in _STRANDED)
        if waiting:
            found.append(f"{waiting} job(s) waiting on the {side} ({backends[url].url}), where "
                         f"no cutover worker runs jobs in {state.phase}: they will not run. A "
                         f"producer still writing there? (check its CUTOVER_TARGET and "
                         f"CUTOVER_CONTROL); move them with `cutover drain`")
    return found


#: States a job waits in for a worker (not held by a drain, not running).
_STRANDED = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.DEFERRED})


def _print_status(doc: dict[str, Any]) -> None:
    out = console()
    phase = doc.get("phase", {})
    out.print(Text.assemble("phase: ", (str(phase.get("phase")), "bold"),
                            f" (epoch {phase.get('epoch')})",
                            f" - {phase['note']}" if phase.get("note") else ""))
    for warning in doc.get("warnings", []):
        out.print(Text.assemble(("WARNING", "bold red"), " ", str(warning)))
    # One table per backend (its URL as the title, not a column): fits 100 columns.
    for key, queues in doc["backends"].items():
        table = Table(title=key, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                      pad_edge=False)
        table.add_column("queue", overflow="fold")
        for col in SUMMARY_STATES:
            table.add_column(col, justify="right")
        for queue, per in queues.items():
            table.add_row(queue, *(str(per[s]) for s in SUMMARY_STATES))
        if not queues:
            table.add_row("(none)", *("0" for _ in SUMMARY_STATES))
        out.print(table)
    for row in doc.get("ledger", []):
        out.print(f"ledger: {row['source']} -> {row['target']}: {row['state']} {row['jobs']}")
    for cls, n in doc.get("failures", {}).items():
        out.print(f"failure records: {cls} {n}")
    _print_metrics(doc.get("metrics", {}))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


#: The metrics table's rows: label -> the cell of one backend's summary.
_METRIC_ROWS: dict[str, Any] = {
    "enqueue p50": lambda r: _ms(r["enqueue_p50"]),
    "enqueue p99": lambda r: _ms(r["enqueue_p99"]),
    "enqueued": lambda r: str(r["enqueued"]),
    "enqueue errors": lambda r: str(r["enqueue_errors"]),
    "consistency": lambda r: ("-" if r["consistency_rate"] is None
                              else f"{r['consistency_rate']:.1%} of {r['shadow_total']}"),
    "duplicates skipped": lambda r: str(r["duplicates_skipped"]),
    "in flight": lambda r: str(r["in_flight"]),
    "succeeded": lambda r: str(r["succeeded"]),
    "failed": lambda r: str(r["failed"]),
    "retried": lambda r: str(r["retried"]),
    "job p50": lambda r: _ms(r["job_p50"]),
    "job p99": lambda r: _ms(r["job_p99"]),
}


def _print_metrics(view: dict[str, Any]) -> None:
    """The merged metrics, one column per backend (a row per metric: fits 100 columns); nothing
    when nothing was counted (every source empty)."""
    backends = view.get("backends", {})
    if not backends:
        return
    out = console()
    table = Table(title=f"metrics (from {', '.join(view.get('sources', []))})",
                  title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("metric")
    for name in backends:
        table.add_column(name, justify="right")
    for label, cell in _METRIC_ROWS.items():
        table.add_row(label, *(cell(row) for row in backends.values()))
    out.print(table)


@click.command(name="audit")
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
        out.print(Text.assemble((cls, "bold"), f": {len(jobs)}"))
        for job in jobs[:10]:
            out.print(f"  {job['id']} ({job['task']}, queue {job['queue']}): {job['reason']}")
        if len(jobs) > 10:
            out.print(f"  ... {len(jobs) - 10} more (--json or --report for all)")
    misreads = doc.get("plain_procrastinate_misreads")
    if misreads:
        out.print(Text.assemble(
            ("a plain procrastinate App would misread", "bold"), " (run the target with "
            "cutover_procrastinate.make_app, which reads them right; information only):"))
        for task, reasons in misreads.items():
            out.print(f"  {task}: " + "; ".join(f"{r} ({n} jobs)" for r, n in reasons.items()))
    if doc["left_behind"]:
        out.print("left behind by a drain: " + ", ".join(f"{c} {n}" for c, n in
                                                         doc["left_behind"].items()))
