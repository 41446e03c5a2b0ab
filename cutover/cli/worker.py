"""``cutover worker``: run the registry's tasks from one backend."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, cast

import click

from cutover import adapters, marker, metrics
from cutover.backend import QueueBackend
from cutover.cli.context import Context, emit, from_settings, opened
from cutover.control import ControlPlane
from cutover.errors import ConfigurationError
from cutover.fence import PRUNE_GRACE, GateConfig, prune_claims, side_of
from cutover.phases import Side
from cutover.urls import redact
from cutover.worker import Worker

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger("cutover.worker")


@click.command()
@click.option("--backend", "backend_name", required=True, metavar="NAME",
              help="Which side to work: an adapter name (rq, procrastinate, memory), 'source', "
                   "'target', or a URL.")
@click.option("--queue", "-q", "queues", multiple=True, metavar="Q",
              help="Queue to work (repeatable; default: all queues).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1),
              help=from_settings("worker_concurrency", "Jobs run at once (threads)."))
@click.option("--burst", is_flag=True,
              help="Exit once nothing runnable is left (skipped jobs are reported, not retried).")
@click.option("--poll-interval", type=click.FloatRange(min=0.01),
              help=from_settings("worker_poll_interval", "Seconds between polls when idle."))
@click.option("--stalled-after", type=click.FloatRange(min=1),
              help=from_settings("worker_stalled_after", "Seconds without heartbeat after which "
                                 "a started job is put back to waiting."))
@click.option("--timeout", type=click.FloatRange(min=0),
              help=from_settings("worker_timeout", "Seconds a job may run unless the job (RQ "
                                 "job_timeout) or its task sets its own limit; 0: no limit."))
@click.option("--isolation", type=click.Choice(["process", "thread"]),
              help=from_settings("worker_isolation", "process: each thread runs its jobs in a "
                                 "child process, killed on timeout; thread: in the worker "
                                 "process (a job past its timeout is failed and the worker "
                                 "exits 3 for its supervisor to restart it)."))
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help=from_settings("metrics_port", "Serve this process's metrics as Prometheus "
                                 "text at http://HOST:PORT/metrics (0: a free port, logged)."))
@click.option("--metrics-host", metavar="HOST",
              help=from_settings("metrics_host", "Address the metrics server listens on."))
@click.option("--lease", type=click.FloatRange(min=0.5), metavar="SECONDS",
              help=from_settings("claim_lease", "Staged cut-over: the lease of a job's claim in "
                                 "the fence, extended every third of it while the job runs; a "
                                 "worker killed mid-job loses the job to the other copy after "
                                 "it."))
@click.option("--unfenced", is_flag=True,
              help="Run without the control plane on a store marked as in a staged cut-over "
                   "(needs --why; logged). Only for a cut-over that was retired: during one, "
                   "an unfenced worker runs jobs twice.")
@click.option("--why", default=None, metavar="TEXT", help="Why --unfenced (logged).")
@click.pass_obj
def worker(ctx: Context, backend_name: str, queues: tuple[str, ...], concurrency: int | None,
           burst: bool, poll_interval: float | None, stalled_after: float | None,
           timeout: float | None, isolation: str | None, metrics_port: int | None,
           metrics_host: str | None, lease: float | None, unfenced: bool,
           why: str | None) -> None:
    """Run the registry's tasks from one backend.

    Runs jobs enqueued through queue-cutover and jobs that plain RQ or Procrastinate code
    enqueued (by function path or task name). A job whose payload is unsafe or whose task is not
    in the registry is reported and left in place, never run. Whatever a task raises
    (SystemExit and KeyboardInterrupt included) fails or retries its job, with the traceback
    logged and kept. SIGTERM or Ctrl-C finishes the running jobs and exits; a second one exits at
    once with code 2 (interrupted), its running jobs recovered as stalled by the next worker.

    When a control plane exists (the PostgreSQL side's database, or --control) the worker
    follows the staged cut-over's phase: it registers in the fleet, runs jobs through the fence
    in live and rampdown (a job with a copy on each side runs once), dry-runs the target's jobs in
    shadow (compared with the source copy, never run) and claims nothing where its side is out of
    service. With no control plane, or before any phase was set, it works as a plain worker;
    but a store that a staged cut-over marked (its first phase change out of off marks both
    stores) refuses a worker without the control plane (exit 2, naming it), unless --unfenced
    --why TEXT.
    """
    if unfenced and not (why and why.strip()):
        raise ConfigurationError("--unfenced needs --why TEXT: a worker outside the fence on a "
                                 "store in a cut-over is logged with its reason")
    s = ctx.settings.with_options(  # the options given win over the environment
        worker_concurrency=concurrency, worker_poll_interval=poll_interval,
        worker_stalled_after=stalled_after, worker_timeout=timeout, worker_isolation=isolation,
        metrics_port=metrics_port, metrics_host=metrics_host, claim_lease=lease,
    ).check(  # refuse a malformed variable of this command before starting anything
        "worker_concurrency", "worker_poll_interval", "worker_stalled_after", "worker_timeout",
        "worker_isolation", "metrics_port", "metrics_host", "claim_lease")
    backend: QueueBackend | None = None
    source: QueueBackend | None = None
    control: ControlPlane | None = None
    gate: GateConfig | None = None
    server = None if s.metrics_port is None else _serve_metrics(s.metrics_port, s.metrics_host)
    try:
        registry = ctx.registry()
        url = ctx.backend_url(backend_name)
        backend = adapters.open_backend(url)
        if server is not None:  # jobs per queue and state, read when scraped (not per job)
            metrics.METRICS.track_counts(backend)
        control, why_none = _control_plane(ctx)
        if control is None:
            _check_unmarked(backend, why_none, why if unfenced else None)
        else:
            # A control plane that is not the one the store's marker names (a leftover
            # schema, another database) is refused, whatever phase it holds (exit 2).
            marker.check_control(backend, control, "refusing to start")
            state = control.read_phase()
            side = side_of(backend, state, ctx.source, ctx.target, url)
            if state.epoch > 0 and state.pair is not None and marker.read(backend) is None:
                # A cut-over begun before stores were marked, or a marker deleted: mark the
                # store, so that a worker started on it without the control plane refuses.
                p = state.pair
                marker.write(backend, marker.make(control.url, control.schema, p.source_key,
                                                  p.source_url, p.target_key, p.target_url,
                                                  state.phase.value, state.epoch,
                                                  control_key=control.identity()))
            if side is Side.TARGET and ctx.source:
                source = cast(QueueBackend, _SourceOnDemand(ctx.source))
            gate = GateConfig(control, side, source=source, lease=s.claim_lease)
        report = Worker(backend, registry, queues=queues or None,
                        concurrency=s.worker_concurrency, burst=burst,
                        poll_interval=s.worker_poll_interval,
                        stalled_after=s.worker_stalled_after, timeout=s.worker_timeout or None,
                        isolation=s.worker_isolation, gate=gate).run()
    finally:
        if control is not None:  # the worker closed the gate it built from ``gate``
            control.close()
        if source is not None:
            source.close()
        if backend is not None:
            backend.close()
        if server is not None:
            server.shutdown()
            server.server_close()
    summary = {"succeeded": report.succeeded, "failed": report.failed, "retried": report.retried,
               "skipped": report.skipped, "recovered": report.recovered,
               "abandoned": report.abandoned, "duplicates_skipped": report.duplicates,
               "shadowed": report.shadowed}
    emit(ctx, summary, f"succeeded {report.succeeded}, failed {report.failed}, retried "
         f"{report.retried}, skipped {len(report.skipped)}"
         + (f", duplicates skipped {report.duplicates}" if report.duplicates else "")
         + (f", dry-run (shadow) {report.shadowed}" if report.shadowed else "")
         + "".join(f"\n  skipped {k}: {v}" for k, v in report.skipped.items())
         + "".join(f"\n  timed out, thread still running: {k}" for k in report.abandoned))
    if report.abandoned:
        raise SystemExit(3)


class _SourceOnDemand:
    """The source a target-side worker compares its shadow dry runs with (the fence reads a
    job's source copy, ``get``), opened at its first use: a worker that never dry-runs (every
    phase but shadow) never opens it, nor imports its driver (rq and redis: ~0.2 s of a
    procrastinate-side worker's start-up). A malformed URL is refused at once; an unreachable
    source fails the first dry run that needs it, as a source lost later would."""

    def __init__(self, url: str) -> None:
        adapters.split(url)  # a malformed URL or an unknown scheme: exit 2 now
        self._url = url
        self._lock = threading.Lock()
        self._backend: QueueBackend | None = None

    def _open(self) -> QueueBackend:
        with self._lock:
            if self._backend is None:
                self._backend = adapters.open_backend(self._url)
            return self._backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._open(), name)

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None


def _serve_metrics(port: int, host: str) -> WSGIServer:
    """Start the /metrics server, or refuse (exit 2) naming the address that failed."""
    try:
        server = metrics.serve(port, host)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
                                 ) from exc
    log.info("metrics at http://%s:%d/metrics", host, server.server_port,
             extra={"event": "metrics"})
    return server


def _check_unmarked(backend: QueueBackend, why_none: str, unfenced_why: str | None) -> None:
    """A worker without a control plane: refuse (exit 2) when its store carries the cut-over
    marker (cutover.marker), unless --unfenced --why (logged). One read; nothing else."""
    found = marker.read(backend)
    if found is None:
        return
    if unfenced_why is None:
        marker.refuse_unfenced(backend, found, why_none)
    log.warning("running UNFENCED on %s, a store in a staged cut-over (%s -> %s, control plane "
                "%s schema %s) without its control plane (%s): --unfenced --why %r",
                backend.url, found.source_url, found.target_url, found.control_url,
                found.schema, why_none, unfenced_why, extra={"event": "unfenced_worker"})


def _control_plane(ctx: Context) -> tuple[ControlPlane | None, str]:
    """The control plane the worker follows, or None and why: no PostgreSQL side and no
    --control, or a database without the control schema (no cut-over there: the worker works as
    before, unless its store is marked). A control plane that exists but cannot be read refuses
    (its error's exit code)."""
    if not (ctx.control or ctx.source or ctx.target):
        return None, "no --control, --source or --target given"
    try:
        ctx.control_url()
    except ConfigurationError:  # neither side is PostgreSQL and no --control: no cut-over
        return None, "no --control given and neither --source nor --target is PostgreSQL"
    # A malformed CUTOVER_SCHEMA or CUTOVER_CONTROL_POOLING refuses (exit 2): a worker that
    # skipped the control plane for it would run jobs outside the fence.
    control = ctx.control_plane()
    if not control.initialized():
        where = f"{redact(control.url)} has no control schema {control.schema!r}"
        control.close()
        return None, where
    control.require()
    return control, ""


@click.command("prune-claims")
@click.option("--older-than", type=click.FloatRange(min=0), default=PRUNE_GRACE / 3600,
              show_default=True, metavar="HOURS",
              help="Keep every claim that finished less than HOURS ago.")
@click.option("--limit", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Claims looked at (and at most deleted) in this run.")
@click.pass_obj
def prune_claims_cmd(ctx: Context, older_than: float, limit: int) -> None:
    """Delete finished fence claims that no copy of their job needs any more: finished more
    than --older-than ago, and no live copy of the job (waiting, scheduled, running, or held
    by a drain) on either backend. Claims still held are never touched. Refused (exit 3)
    while a drain runs between the two backends."""
    ctx.need("source", "target")
    assert ctx.source is not None and ctx.target is not None
    control = ctx.control_plane()
    try:
        control.require()
        with opened(ctx.source, ctx.target) as (source, target):
            report = prune_claims(control, source, target, older_than=older_than * 3600,
                                  limit=limit)
    finally:
        control.close()
    emit(ctx, {"deleted": report.deleted, "kept": report.kept},
         f"deleted {report.deleted} finished claim(s); kept {len(report.kept)} whose job "
         "still has a live copy")
