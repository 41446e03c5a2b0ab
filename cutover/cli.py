"""The ``cutover`` command. Commands parse, call the library, and print; nothing more."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from typing import Any, NoReturn

import click

from cutover import adapters, logs
from cutover.backend import QueueBackend
from cutover.control import ControlPlane, control_url
from cutover.errors import ConfigurationError, CutoverError
from cutover.registry import TaskRegistry
from cutover.urls import hiding, redact, redact_text
from cutover.worker import Worker


@dataclasses.dataclass
class Context:
    source: str | None
    target: str | None
    app: str | None
    json: bool
    control: str | None = None

    def need(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name):
                env = {"source": "CUTOVER_SOURCE", "target": "CUTOVER_TARGET"}[name]
                raise ConfigurationError(f"this command needs --{name} URL (or {env})")

    def control_plane(self) -> ControlPlane:
        return ControlPlane(control_url(self.source, self.target, self.control))

    def registry(self) -> TaskRegistry:
        if not self.app:
            raise ConfigurationError("no task registry: pass --app MODULE:ATTR or set CUTOVER_APP")
        return load_registry(self.app)

    def backend_url(self, name: str) -> str:
        """The URL of the side that runs adapter ``name`` (or ``name`` itself, if a URL)."""
        if "://" in name:
            return name
        candidates = {"source": self.source, "target": self.target}
        if name in candidates:
            url = candidates[name]
            if not url:
                raise ConfigurationError(f"--backend {name}: no --{name} URL given")
            return url
        for url in (self.source, self.target):
            if url and adapters.split(url)[0] == name:
                return url
        given = ", ".join(f"{k}={redact(v)}" for k, v in candidates.items() if v) or "none"
        raise ConfigurationError(f"--backend {name}: neither --source nor --target is a {name} "
                                 f"URL (given: {given})")


def load_registry(spec: str) -> TaskRegistry:
    """Import ``MODULE:ATTR`` and check it is a TaskRegistry."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"--app {spec!r}: expected MODULE:ATTR, e.g. myapp.tasks:registry")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # anything the module raises while it is imported
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigurationError(f"--app {spec!r}: cannot import {module_name!r}: "
                                 f"{type(exc).__name__}: {first}") from exc
    registry = getattr(module, attr, None)
    if not isinstance(registry, TaskRegistry):
        raise ConfigurationError(f"--app {spec!r}: {attr!r} is not a cutover.TaskRegistry "
                                 f"(found {type(registry).__name__})")
    return registry


_ERRORS: dict[int, type[click.ClickException]] = {
    code: type(f"CutoverExit{code}", (click.ClickException,), {"exit_code": code})
    for code in (1, 2, 3)
}


def fail(exc: CutoverError) -> NoReturn:
    """Report a CutoverError the CLI way: redacted, with the error's exit code."""
    raise _ERRORS.get(exc.exit_code, _ERRORS[2])(redact_text(str(exc))) from exc


def emit(ctx: Context, document: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(document, default=str, indent=2) if ctx.json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--source", envvar="CUTOVER_SOURCE", metavar="URL",
              help="Backend the jobs come from today, e.g. redis://localhost:6379/0 "
                   "[env CUTOVER_SOURCE].")
@click.option("--target", envvar="CUTOVER_TARGET", metavar="URL",
              help="Backend the jobs go to, e.g. postgresql://localhost/app [env CUTOVER_TARGET].")
@click.option("--app", envvar="CUTOVER_APP", metavar="MODULE:ATTR",
              help="The application's cutover.TaskRegistry [env CUTOVER_APP].")
@click.option("--control", envvar="CUTOVER_CONTROL", metavar="URL",
              help="PostgreSQL database of the control plane (ledger, phase) when neither side is "
                   "PostgreSQL [env CUTOVER_CONTROL; default: the PostgreSQL side].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--log-level", envvar="CUTOVER_LOG_LEVEL", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Verbosity of the logs on stderr.")
@click.option("--log-format", envvar="CUTOVER_LOG_FORMAT", default="text", show_default=True,
              type=click.Choice(["text", "json"]), help="json: one object a line, for shippers.")
@click.version_option(package_name="queue-cutover")
@click.pass_context
def cli(click_ctx: click.Context, source: str | None, target: str | None, app: str | None,
        control: str | None, as_json: bool, log_level: str, log_format: str) -> None:
    """Move background jobs from RQ (Redis) to Procrastinate (PostgreSQL), and back, in stages,
    and prove that no job was lost or run twice.

    URL schemes pick the adapter: redis://, rediss://, unix:// -> rq; postgresql://, postgres://
    -> procrastinate; memory:// for tests; or explicit ADAPTER+URL (rq+redis://...).

    Exit codes: 0 success; 1 verification found loss, duplicates or mismatches; 2 usage or
    configuration error; 3 a precondition refused the step.
    """
    # Every password given on the command line is scrubbed from every log line and error of
    # this command, however a driver's message cut its URL (see cutover.urls).
    click_ctx.with_resource(hiding(source, target, control))
    logs.setup(log_level, "json" if log_format == "json" else "text")
    click_ctx.obj = Context(source=source, target=target, app=app, json=as_json,
                            control=control)


@cli.command()
@click.option("--backend", "backend_name", required=True, metavar="NAME",
              help="Which side to work: an adapter name (rq, procrastinate, memory), 'source', "
                   "'target', or a URL.")
@click.option("--queue", "-q", "queues", multiple=True, metavar="Q",
              help="Queue to work (repeatable; default: all queues).")
@click.option("--concurrency", "-c", envvar="CUTOVER_WORKER_CONCURRENCY", default=1,
              show_default=True, type=click.IntRange(min=1),
              help="Jobs run at once (threads) [env CUTOVER_WORKER_CONCURRENCY].")
@click.option("--burst", is_flag=True,
              help="Exit once nothing runnable is left (skipped jobs are reported, not retried).")
@click.option("--poll-interval", default=0.5, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds between polls when idle.")
@click.option("--stalled-after", default=60.0, show_default=True,
              type=click.FloatRange(min=1),
              help="Seconds without heartbeat after which a started job is put back to waiting.")
@click.option("--timeout", envvar="CUTOVER_WORKER_TIMEOUT", default=180.0, show_default=True,
              type=click.FloatRange(min=0),
              help="Seconds a job may run unless the job (RQ job_timeout) or its task sets its "
                   "own limit; 0: no limit [env CUTOVER_WORKER_TIMEOUT].")
@click.option("--isolation", envvar="CUTOVER_WORKER_ISOLATION", default="process",
              show_default=True, type=click.Choice(["process", "thread"]),
              help="process: each thread runs its jobs in a child process, killed on timeout; "
                   "thread: in the worker process (a job past its timeout is failed and the "
                   "worker exits 3 for its supervisor to restart it) "
                   "[env CUTOVER_WORKER_ISOLATION].")
@click.pass_obj
def worker(ctx: Context, backend_name: str, queues: tuple[str, ...], concurrency: int,
           burst: bool, poll_interval: float, stalled_after: float, timeout: float,
           isolation: str) -> None:
    """Run the registry's tasks from one backend.

    Runs jobs enqueued through queue-cutover and jobs that plain RQ or Procrastinate code
    enqueued (by function path or task name). A job whose payload is unsafe or whose task is not
    in the registry is reported and left in place, never run. Whatever a task raises
    (SystemExit and KeyboardInterrupt included) fails or retries its job, with the traceback
    logged and kept. SIGTERM or Ctrl-C finishes the running jobs and exits; a second one exits at
    once.
    """
    backend: QueueBackend | None = None
    try:
        registry = ctx.registry()
        backend = adapters.open_backend(ctx.backend_url(backend_name))
        report = Worker(backend, registry, queues=queues or None, concurrency=concurrency,
                        burst=burst, poll_interval=poll_interval,
                        stalled_after=stalled_after, timeout=timeout or None,
                        isolation="process" if isolation == "process" else "thread").run()
    except CutoverError as exc:
        fail(exc)
    finally:
        if backend is not None:
            backend.close()
    summary = {"succeeded": report.succeeded, "failed": report.failed, "retried": report.retried,
               "skipped": report.skipped, "recovered": report.recovered,
               "abandoned": report.abandoned}
    emit(ctx, summary, f"succeeded {report.succeeded}, failed {report.failed}, retried "
         f"{report.retried}, skipped {len(report.skipped)}"
         + "".join(f"\n  skipped {k}: {v}" for k, v in report.skipped.items())
         + "".join(f"\n  timed out, thread still running: {k}" for k in report.abandoned))
    if report.abandoned:
        raise SystemExit(3)


from cutover import commands, release_cmd  # noqa: E402  (register the cut-over commands)

assert commands
assert release_cmd


def main() -> None:
    cli(prog_name="cutover")
