"""The ``cutover`` command: the click group and its global options. The commands live in modules
by theme (worker, setup, inspect, move, proof, phase); each imports :mod:`cutover.cli.context`,
never this module, and this module adds their commands to the group.

A command's module is imported when the command runs (or its own ``--help`` is asked), not
before: ``cutover --help`` lists the commands from :data:`COMMANDS` (their first sentence, the
short help click would show) without importing rich, psycopg, redis, rq or procrastinate, and
``cutover worker`` imports only what the worker needs. ``cli.commands`` still maps every name
to its command (a read imports it).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import click

from cutover import logs
from cutover.cli.context import Context, CutoverGroup, _accept_globals, from_settings
from cutover.settings import LOG_LEVELS, Settings
from cutover.urls import hiding

#: Every command: name -> (module, attribute, its help's first sentence). The sentence is what
#: ``cutover --help`` lists (a test checks it against the command's own help).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "worker": ("cutover.cli.worker", "worker", "Run the registry's tasks from one backend."),
    "prune-claims": ("cutover.cli.worker", "prune_claims_cmd",
                     "Delete finished fence claims that no copy of their job needs any more: "
                     "finished more than --older-than ago, and no live copy of the job "
                     "(waiting, scheduled, running, or held by a drain) on either backend."),
    "init": ("cutover.cli.setup", "init", "Create the control schema (ledger, phase, runs) and "
             "Procrastinate's schema when absent."),
    "status": ("cutover.cli.inspect", "status",
               "The phase, per backend and queue the jobs waiting / scheduled / deferred / held "
               "/ active / completed / failed / canceled, the ledger's summary, and the metrics "
               "per backend (enqueue latency p50/p99, errors, consistency rate, duplicates "
               "skipped, in flight) merged over the fleet, when anything was counted."),
    "audit": ("cutover.cli.inspect", "audit_cmd",
              "Inventory the source in every state, and classify each job before anything "
              "moves: movable; lossy (moves, but a named feature does not); in_place (running, "
              "waiting on a dependency, orphaned, misplaced, held by another drain); "
              "quarantined; unknown_task (with a suggestion); unsupported (args the codec "
              "cannot carry, or ids, names, values the --target or the ledger cannot hold: give "
              "--target to check its limits); failed; history (finished, canceled)."),
    "drain": ("cutover.cli.move", "drain",
              "Move every movable job from --source to --target, with its ledger rows."),
    "release": ("cutover.cli.move", "release",
                "Give jobs a drain holds on --source back to where it took them from (queue "
                "list, scheduled or deferred registry), so the source's workers run them "
                "again."),
    "verify": ("cutover.cli.proof", "verify",
               "Prove that every job of the ledger between --source and --target (moved by a "
               "drain, or accepted by the Router in a staged cut-over) ran exactly once, failed "
               "for good, or waits where a worker runs it in the current phase."),
    "phase": ("cutover.cli.phase", "phase",
              "The phase of the staged cut-over: off -> shadow -> live -> rampdown -> "
              "complete."),
    "rollback": ("cutover.cli.phase", "rollback", "Step back one phase (or to --to PHASE)."),
    "complete": ("cutover.cli.phase", "complete",
                 "Advance into complete (the point of no return): producers acknowledged the "
                 "epoch, the source drained, verify clean."),
}


class _Commands(dict[str, click.Command]):
    """The group's commands, each imported (and given the global options) on first read."""

    def __init__(self, group: click.Group) -> None:
        super().__init__()
        self.group = group

    def __missing__(self, name: str) -> click.Command:
        if name not in COMMANDS:
            raise KeyError(name)
        module, attr, _ = COMMANDS[name]
        command: click.Command = getattr(importlib.import_module(module), attr)
        _accept_globals(command, self.group)
        self[name] = command
        return command

    def _names(self) -> list[str]:
        return sorted({*COMMANDS, *super().keys()})

    def get(self, name: str, default: Any = None) -> Any:
        if name in self:
            return self[name]
        return default

    def loaded(self) -> dict[str, click.Command]:
        """The commands imported so far (none of them imported by this call)."""
        return dict(dict.items(self))

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def keys(self) -> Any:
        return self._names()

    def values(self) -> Any:
        return [self[n] for n in self._names()]

    def items(self) -> Any:
        return [(n, self[n]) for n in self._names()]


class LazyGroup(CutoverGroup):
    """The ``cutover`` group: its commands imported when used (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands(self)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, from the commands already imported or else :data:`COMMANDS`."""
        commands = self.commands
        loaded = commands.loaded() if isinstance(commands, _Commands) else dict(commands)
        rows = []
        for name in self.list_commands(ctx):
            command = loaded.get(name) or click.Command(name, help=COMMANDS[name][2])
            if not command.hidden:
                rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, c.get_short_help_str(limit)) for name, c in rows])


@click.group(cls=LazyGroup,
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



def main() -> None:
    """The console entry point (``cutover``, ``python -m cutover``)."""
    cli(prog_name="cutover")
