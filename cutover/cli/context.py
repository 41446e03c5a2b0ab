"""What every command shares: the Context, output (emit, tables, progress), ``confirm``, and the
one error funnel.

Command modules import this module, never the group (``cutover.cli.main`` imports them and adds
their commands), so there is no import cycle. A command raises :class:`CutoverError` and nothing
else: :class:`CutoverGroup` turns it into the error's exit code, redacted, for every command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from cutover import adapters
from cutover.backend import QueueBackend
from cutover.control import ControlPlane, control_url
from cutover.errors import ConfigurationError, CutoverError
from cutover.registry import TaskRegistry
from cutover.settings import ENV, Settings
from cutover.urls import redact, redact_text

log = logging.getLogger("cutover.cli")
stderr = Console(stderr=True)


@dataclasses.dataclass
class Context:
    """One ``cutover`` run (``click``'s ``obj``): its :class:`Settings`, built once from the
    environment and the global options, and whether to print JSON."""

    settings: Settings
    json: bool = False

    @property
    def source(self) -> str | None:
        return self.settings.source

    @property
    def target(self) -> str | None:
        return self.settings.target

    @property
    def app(self) -> str | None:
        return self.settings.app

    @property
    def control(self) -> str | None:
        return self.settings.control

    def need(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name):
                raise ConfigurationError(f"this command needs --{name} URL (or {ENV[name]})")

    def control_url(self) -> str:
        """The control plane's PostgreSQL URL; refuses (exit 2) when there is none."""
        return control_url(self.source, self.target, self.control)

    def control_plane(self) -> ControlPlane:
        """The control plane, in the configured schema and pooling (a malformed
        CUTOVER_SCHEMA or CUTOVER_CONTROL_POOLING refuses, exit 2, naming it)."""
        return ControlPlane(self.control_url(), self.settings.schema,
                            pooling=self.settings.control_pooling)

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


def from_settings(field: str, text: str) -> str:
    """An option's help: ``text``, then its default and variable (from Settings, so the help
    says what the code does)."""
    default = next(f.default for f in dataclasses.fields(Settings) if f.name == field)
    shown = "none" if default is None else f"{default:g}" if isinstance(default, float) else default
    env = f"; env {ENV[field]}" if field in ENV else ""
    return f"{text} [default: {shown}{env}]"


# --- the error funnel and --json anywhere -------------------------------------------------------

_ERRORS: dict[int, type[click.ClickException]] = {
    code: type(f"CutoverExit{code}", (click.ClickException,), {"exit_code": code})
    for code in (1, 2, 3)
}


def _json_after_name(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # The group's callback has run (and made the Context) before a command parses its options.
    obj = ctx.find_object(Context)
    if value and obj is not None:
        obj.json = True


def _accept_json(command: click.Command) -> None:
    """Give ``command`` (and, for a group, each of its commands) a ``--json`` flag of its own, so
    ``cutover status --json`` means ``cutover --json status``."""
    if not any("--json" in p.opts for p in command.params):
        command.params.append(click.Option(
            ["--json"], is_flag=True, expose_value=False, callback=_json_after_name,
            help="Print one JSON document on stdout (as `cutover --json COMMAND`)."))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_json(sub)


class CutoverGroup(click.Group):
    """The ``cutover`` group: the one place a :class:`CutoverError` becomes an exit code.

    Every command below it (nested groups included) raises and never catches ``CutoverError``;
    the message is redacted here, while the passwords the command line registered are still
    hidden (the group's context, which holds them, closes after this returns).
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _accept_json(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CutoverError as exc:
            message = redact_text(str(exc))
            obj = ctx.find_object(Context)
            if obj is not None and obj.json:  # a script reading stdout gets one document
                click.echo(json.dumps({"error": message, "kind": type(exc).__name__,
                                       "exit_code": exc.exit_code}, indent=2))
            raise _ERRORS.get(exc.exit_code, _ERRORS[2])(message) from exc


# --- output -------------------------------------------------------------------------------------

def emit(ctx: Context, document: dict[str, Any], text: str) -> None:
    """``document`` as JSON with --json, else ``text``."""
    click.echo(json.dumps(document, default=str, indent=2) if ctx.json else text)


def console() -> Console:
    """Where tables go: the terminal's width on a terminal; elsewhere (a CI log, a pipe, a file)
    as wide as the content, so no cell is cut to fit 80 columns."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000, soft_wrap=True)


@contextlib.contextmanager
def opened(*urls: str) -> Iterator[list[QueueBackend]]:
    """Open a backend for each URL; close them all on the way out."""
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
    """Ask ``question`` on a terminal; without one, refuse unless --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigurationError(f"{question} Refusing without a terminal to ask: pass --yes")
    click.confirm(question, abort=True)


class DrainProgress:
    """A bar with rate and ETA on a terminal; a plain line every few seconds elsewhere."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._bar: Progress | None = None
        self._task: Any = None
        self._last = 0.0
        self._start = time.monotonic()

    def __enter__(self) -> DrainProgress:
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
