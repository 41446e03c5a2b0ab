"""The ``cutover`` command: the click group and its global options. The commands live in modules
by theme (worker, setup, inspect, move, proof, phase); each imports :mod:`cutover.cli.context`,
never this module, and this module adds their commands to the group."""

from __future__ import annotations

import click

from cutover import logs
from cutover.cli import inspect, move, phase, proof, setup, worker
from cutover.cli.context import Context, CutoverGroup, from_settings
from cutover.settings import LOG_LEVELS, Settings
from cutover.urls import hiding


@click.group(cls=CutoverGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--source", metavar="URL",
              help="Backend the jobs come from today, e.g. redis://localhost:6379/0 "
                   "[env CUTOVER_SOURCE].")
@click.option("--target", metavar="URL",
              help="Backend the jobs go to, e.g. postgresql://localhost/app [env CUTOVER_TARGET].")
@click.option("--app", metavar="MODULE:ATTR",
              help="The application's cutover.TaskRegistry [env CUTOVER_APP].")
@click.option("--control", metavar="URL",
              help="PostgreSQL database of the control plane (ledger, phase) when neither side is "
                   "PostgreSQL [env CUTOVER_CONTROL; default: the PostgreSQL side].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help=from_settings("log_level", "Verbosity of the logs on stderr."))
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help=from_settings("log_format", "json: one object a line, for shippers."))
@click.version_option(package_name="queue-cutover")
@click.pass_context
def cli(click_ctx: click.Context, source: str | None, target: str | None, app: str | None,
        control: str | None, as_json: bool, log_level: str | None,
        log_format: str | None) -> None:
    """Move background jobs from RQ (Redis) to Procrastinate (PostgreSQL), and back, in stages,
    and prove that no job was lost or run twice.

    URL schemes pick the adapter: redis://, rediss://, unix:// -> rq; postgresql://, postgres://
    -> procrastinate; memory:// for tests; or explicit ADAPTER+URL (rq+redis://...).

    Exit codes: 0 success; 1 verification found loss, duplicates or mismatches; 2 usage or
    configuration error; 3 a precondition refused the step.
    """
    # Built once: the environment (the one reader of CUTOVER_*), then the options given.
    settings = Settings.from_env().with_options(source=source, target=target, app=app,
                                                control=control, log_level=log_level,
                                                log_format=log_format)
    # Every password given on the command line is scrubbed from every log line and error of
    # this command, however a driver's message cut its URL (see cutover.urls).
    click_ctx.with_resource(hiding(settings.source, settings.target, settings.control))
    logs.setup(settings.log_level, settings.log_format)
    click_ctx.obj = Context(settings=settings, json=as_json)


for command in (worker.worker, worker.prune_claims_cmd, setup.init, inspect.status,
                inspect.audit_cmd, move.drain, move.release, proof.verify, phase.phase,
                phase.rollback, phase.complete):
    cli.add_command(command)


def main() -> None:
    """The console entry point (``cutover``, ``python -m cutover``)."""
    cli(prog_name="cutover")
