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
import re
import sys
import time
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from cutover import logs
from cutover.errors import ConfigurationError, CutoverError
from cutover.settings import ENV, Settings
from cutover.urls import hiding, redact, redact_text

if TYPE_CHECKING:  # imported where used: `cutover --help` loads none of them (start-up time)
    from rich.console import Console
    from rich.progress import Progress

    from cutover.backend import QueueBackend
    from cutover.control import ControlPlane
    from cutover.registry import TaskRegistry

log = logging.getLogger("cutover.cli")


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

    def given_after_name(self, click_ctx: click.Context, name: str, value: Any) -> None:
        """A global option given after the command's name (``cutover status --source URL``):
        as if given before it; its password hidden too, and the logs set up again for
        ``--log-level`` and ``--log-format``."""
        if name == "as_json":
            self.json = bool(value)
            return
        self.settings = self.settings.with_options(**{name: value})
        if name in ("source", "target", "control"):
            # On the root context: it closes after the funnel has redacted the error.
            click_ctx.find_root().with_resource(hiding(value))
        if name in ("log_level", "log_format"):
            logs.setup(self.settings.log_level, self.settings.log_format)

    def need(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name):
                raise ConfigurationError(f"this command needs --{name} URL (or {ENV[name]})")

    def control_url(self) -> str:
        """The control plane's PostgreSQL URL; refuses (exit 2) when there is none."""
        from cutover.control import control_url

        return control_url(self.source, self.target, self.control)

    def control_plane(self) -> ControlPlane:
        """The control plane, in the configured schema and pooling (a malformed
        CUTOVER_SCHEMA or CUTOVER_CONTROL_POOLING refuses, exit 2, naming it)."""
        from cutover.control import ControlPlane

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
        from cutover import adapters

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
    from cutover.registry import TaskRegistry

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


# --- the error funnel and the global options anywhere ---------------------------------------

_ERRORS: dict[int, type[click.ClickException]] = {
    code: type(f"CutoverExit{code}", (click.ClickException,), {"exit_code": code})
    for code in (1, 2, 3)
}

_JSON = click.Option(["--json", "as_json"], is_flag=True, help="Print one JSON document on stdout.")

#: The group's parameters that stay the group's alone (not repeated after a command's name).
_GROUP_ONLY = frozenset({"help", "version"})


def _global_after_name(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command's name: put over what the group built (the
    group's callback has run, and made the Context, before a command parses its options)."""
    obj = ctx.find_object(Context)
    if obj is None or value is None or value is False or param.name is None:
        return
    obj.given_after_name(ctx, param.name, value)


def _accept_globals(command: click.Command, group: click.Command) -> None:
    """Give ``command`` (and, for a group, each of its commands) the ``group``'s global options
    (``--source``, ``--target``, ``--app``, ``--control``, ``--json``, ``--log-level``,
    ``--log-format``), so ``cutover status --source URL`` means ``cutover --source URL status``.
    One given after the name wins over the same one given before it."""
    taken = {opt for p in command.params for opt in p.opts}
    given = list(group.params)
    if not any("--json" in p.opts for p in given):  # --json after the name, in every group
        given.append(_JSON)
    for param in given:
        if not isinstance(param, click.Option) or param.name in _GROUP_ONLY:
            continue
        if taken & set(param.opts):
            continue  # the command has an option of its own by that name
        command.params.append(click.Option(
            [*param.opts, param.name or ""], type=param.type, is_flag=param.is_flag,
            metavar=param.metavar, expose_value=False, callback=_global_after_name,
            help=f"{param.help or ''} (global)".strip()))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_globals(sub, group)


_OURS = re.compile(r"[/\\](cutover(?:_rq|_procrastinate)?[/\\].*)$")
_LIBRARY = re.compile(r"[/\\](?:site-packages|python\d[.\d]*)[/\\](.*)$")


def _where(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``path:line in function``: the innermost frame in this
    toolkit's code, then the innermost of all when that is another library's."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"

    def short(frame: traceback.FrameSummary) -> str:
        found = _OURS.search(frame.filename) or _LIBRARY.search(frame.filename)
        path = found.group(1) if found else os.path.basename(frame.filename)
        return f"{path.replace(os.sep, '/')}:{frame.lineno} in {frame.name}"

    ours = [f for f in frames if _OURS.search(f.filename)]
    if ours and ours[-1] is not frames[-1]:
        return f"{short(ours[-1])}, {short(frames[-1])}"
    return short(frames[-1])


def _unexpected(exc: Exception) -> str:
    """The one-line message of an error that is not a :class:`CutoverError` (a bug, or an input
    nothing checked): its type, its first line, where; redacted."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return redact_text(f"unexpected error {type(exc).__name__}"
                       + (f": {first}" if first else "")
                       + f" (at {_where(exc)}); --log-level debug shows the traceback")


class CutoverGroup(click.Group):
    """The ``cutover`` group: the one place an error becomes an exit code.

    Every command below it (nested groups included) raises and never catches ``CutoverError``;
    the message is redacted here, while the passwords the command line registered are still
    hidden (the group's context, which holds them, closes after this returns). Any other
    exception (a bug, or an input nothing checked) exits 2 with a short message and where it
    was raised, never with a traceback (that is logged at debug level, redacted): exit 1 means
    "loss found" and an uncaught exception must never look like it.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _accept_globals(cmd, self)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CutoverError as exc:
            raise self._fail(ctx, redact_text(str(exc)), type(exc).__name__,
                             exc.exit_code) from exc
        except (click.ClickException, click.exceptions.Exit):
            raise  # usage errors (exit 2) and the commands' own exit codes
        except (click.exceptions.Abort, KeyboardInterrupt) as exc:
            raise self._fail(ctx, "aborted (Ctrl-C, or a question answered no)", "Aborted",
                             2) from exc
        except Exception as exc:  # the one funnel: a bug must not exit 1 ("loss found")
            log.debug("unexpected error: traceback", exc_info=True)
            raise self._fail(ctx, _unexpected(exc), "UnexpectedError", 2) from exc

    @staticmethod
    def _fail(ctx: click.Context, message: str, kind: str, code: int) -> click.ClickException:
        obj = ctx.find_object(Context)
        if obj is not None and obj.json:  # a script reading stdout gets one document
            click.echo(json.dumps({"error": message, "kind": kind, "exit_code": code},
                                  indent=2))
        return _ERRORS.get(code, _ERRORS[2])(message)


# --- output -------------------------------------------------------------------------------------

def emit(ctx: Context, document: dict[str, Any], text: str) -> None:
    """``document`` as JSON with --json, else ``text``."""
    click.echo(json.dumps(document, default=str, indent=2) if ctx.json else text)


def _terminal() -> bool:
    return sys.stdout.isatty()


def console() -> Console:
    """Where tables go: the terminal's width on a terminal; elsewhere (a CI log, a pipe, a file)
    as wide as the content, so no cell is cut to fit 80 columns.

    Text is printed as written: no markup (a queue named ``[/]`` or ``[bold]``), no emoji codes
    (``cutover:key:x``), no highlighting; styles are given as :class:`rich.text.Text` styles."""
    from rich.console import Console

    plain: dict[str, Any] = {"markup": False, "emoji": False, "highlight": False}
    if _terminal():
        return Console(**plain)
    return Console(width=100_000, soft_wrap=True, **plain)


@contextlib.contextmanager
def opened(*urls: str) -> Iterator[list[QueueBackend]]:
    """Open a backend for each URL; close them all on the way out."""
    from cutover import adapters

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
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("draining"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.completed} jobs, {task.fields[rate]}/s"),
                                 TimeRemainingColumn(), console=Console(stderr=True))
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
