"""One frozen :class:`Settings`: where the toolkit's configuration comes from, read once.

:meth:`Settings.from_env` is the one place the library reads ``CUTOVER_*`` configuration from the
environment; the command line (``cutover.cli.main``) and :meth:`cutover.Router.from_env` build
their Settings with it, apply the options a person typed (:meth:`Settings.with_options`: an
option given wins over its variable), and pass the value down. Library code below takes
arguments, never ``os.environ``. Two readers stay outside on purpose: the pytest plugin's
``CUTOVER_TEST_*`` server URLs (cutover.testing), and ``CUTOVER_FAULT`` (cutover.faults), a
kill-9 plan for the proof tests that must reach every child process a command starts without
being threaded through each layer, and is not configuration.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from cutover.errors import ConfigurationError

#: Field -> environment variable. Every name here is read by :meth:`Settings.from_env`.
ENV: Final[Mapping[str, str]] = {
    "source": "CUTOVER_SOURCE",
    "target": "CUTOVER_TARGET",
    "control": "CUTOVER_CONTROL",
    "app": "CUTOVER_APP",
    "schema": "CUTOVER_SCHEMA",
    "log_level": "CUTOVER_LOG_LEVEL",
    "log_format": "CUTOVER_LOG_FORMAT",
    "worker_concurrency": "CUTOVER_WORKER_CONCURRENCY",
    "worker_timeout": "CUTOVER_WORKER_TIMEOUT",
    "worker_isolation": "CUTOVER_WORKER_ISOLATION",
    "drain_workers": "CUTOVER_DRAIN_WORKERS",
    "metrics_port": "CUTOVER_METRICS_PORT",
    "metrics_host": "CUTOVER_METRICS_HOST",
    "metrics_from": "CUTOVER_METRICS_FROM",
    "claim_lease": "CUTOVER_CLAIM_LEASE",
    "shadow_min_jobs": "CUTOVER_SHADOW_MIN_JOBS",
    "shadow_min_rate": "CUTOVER_SHADOW_MIN_RATE",
    "ack_wait": "CUTOVER_ACK_WAIT",
    "fleet_lease": "CUTOVER_FLEET_LEASE",
    "control_pooling": "CUTOVER_CONTROL_POOLING",
}

DEFAULT_SCHEMA: Final = "cutover"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Whether the control plane's connections go through a transaction pooler: said outright
#: (``transaction`` / ``session``) or probed (``auto``); see ControlPlane.pooled.
ControlPooling = Literal["auto", "transaction", "session"]
POOLING: Final[tuple[ControlPooling, ...]] = ("auto", "transaction", "session")

# (lowest, highest) allowed for each number; the command line's options use the same bounds.
_BOUNDS: Final[Mapping[str, tuple[float, float | None]]] = {
    "worker_concurrency": (1, None),
    "worker_timeout": (0, None),
    "worker_poll_interval": (0.01, None),
    "worker_stalled_after": (1, None),
    "drain_workers": (1, 64),
    "metrics_port": (0, 65535),
    "claim_lease": (0.5, None),
    "shadow_min_jobs": (0, None),
    "shadow_min_rate": (0, 1),
    "ack_wait": (0, None),
    "fleet_lease": (0, None),
}
# Variables read as numbers (the others are text).
_NUMBERS: Final[Mapping[str, type[int] | type[float]]] = {
    "worker_concurrency": int, "worker_timeout": float, "drain_workers": int, "metrics_port": int,
    "claim_lease": float, "shadow_min_jobs": int, "shadow_min_rate": float, "ack_wait": float,
    "fleet_lease": float,
}
_CHOICES: Final[Mapping[str, tuple[str, ...]]] = {
    "log_level": LOG_LEVELS,
    "log_format": ("text", "json"),
    "worker_isolation": ("process", "thread"),
    "control_pooling": POOLING,
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a command or a producer is configured with. Frozen: build it once, pass it
    down; :meth:`with_options` returns a new one."""

    source: str | None = None
    """URL of the backend the jobs come from today."""
    target: str | None = None
    """URL of the backend the jobs go to."""
    control: str | None = None
    """PostgreSQL URL of the control plane (default: the PostgreSQL side)."""
    app: str | None = None
    """``MODULE:ATTR`` of the application's TaskRegistry."""
    schema: str = DEFAULT_SCHEMA
    """Schema of the control plane (checked where the control plane is opened)."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    worker_concurrency: int = 1
    """Jobs a worker runs at once (threads)."""
    worker_timeout: float = 180.0
    """Seconds a job may run unless it sets its own limit; 0: no limit."""
    worker_isolation: Literal["process", "thread"] = "process"
    worker_poll_interval: float = 0.5
    """Seconds between a worker's polls when idle."""
    worker_stalled_after: float = 60.0
    """Lease: seconds without heartbeat after which a started job is put back to waiting."""
    drain_workers: int = 1
    """Processes a drain splits its jobs between."""
    metrics_port: int | None = None
    """``cutover worker`` serves Prometheus text on this port (0: a free one); None: no server."""
    metrics_host: str = "127.0.0.1"
    """Address the worker's metrics server listens on."""
    metrics_from: tuple[str, ...] = ()
    """``cutover status`` also merges the metrics served at these URLs (space-separated)."""
    claim_lease: float = 30.0
    """Staged cut-over: seconds a worker's claim of a job in the fence lasts (renewed)."""
    shadow_min_jobs: int = 100
    """Phase preconditions: shadow results a move to live wants at least."""
    shadow_min_rate: float = 0.99
    """Phase preconditions: consistency rate (0..1) of the shadow results a move wants."""
    ack_wait: float = 10.0
    """Phase preconditions: seconds a check waits for producers to acknowledge the epoch."""
    fleet_lease: float | None = None
    """Seconds a fleet member stays alive after its last heartbeat (None: the fleet's own)."""
    control_pooling: ControlPooling = "auto"
    """Whether the control plane is behind a transaction pooler (PgBouncer
    ``pool_mode=transaction``): ``transaction``, ``session``, or ``auto`` (probed)."""
    _problems: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False,
                                                     compare=False)
    """Field -> why its variable was refused; reading that field raises (see from_env)."""

    if not TYPE_CHECKING:  # typed as plain fields; at run time a refused field raises
        def __getattribute__(self, name: str) -> Any:
            if not name.startswith("_"):
                problem = object.__getattribute__(self, "_problems").get(name)
                if problem is not None:
                    raise ConfigurationError(problem)
            return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        def value(name: str) -> str:
            return ("<invalid>" if name in self._problems
                    else repr(object.__getattribute__(self, name)))
        shown = ", ".join(f"{f.name}={value(f.name)}" for f in dataclasses.fields(self) if f.repr)
        return f"Settings({shown})"

    def __post_init__(self) -> None:
        level = object.__getattribute__(self, "log_level")
        if isinstance(level, str) and level.upper() in LOG_LEVELS:
            object.__setattr__(self, "log_level", level.upper())
        pooling = object.__getattribute__(self, "control_pooling")
        if isinstance(pooling, str) and pooling.strip().lower() in POOLING:
            object.__setattr__(self, "control_pooling", pooling.strip().lower())
        for name in (*_CHOICES, *_BOUNDS):
            if name not in self._problems:
                problem = _problem(name, object.__getattribute__(self, name))
                if problem is not None:
                    raise ConfigurationError(problem)

    def check(self, *fields: str) -> Settings:
        """Raise the :class:`ConfigurationError` of the first of ``fields`` whose variable was
        refused (a command calls it first for the fields it uses); these settings otherwise."""
        for name in fields:
            getattr(self, name)
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the ``CUTOVER_*`` variables of ``environ`` (default: the process's);
        an unset or empty variable keeps the default.

        Validated lazily, field by field: a malformed value (not a number, out of bounds, not
        one of the choices) does not stop the build; reading that field (or :meth:`check`)
        raises a :class:`ConfigurationError` (exit 2) naming the variable. So a bad
        ``CUTOVER_WORKER_CONCURRENCY`` refuses ``cutover worker`` but not ``cutover status``,
        nor a web process's :meth:`cutover.Router.from_env`."""
        env = os.environ if environ is None else environ
        given: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name, var in ENV.items():
            raw = env.get(var)
            if not raw or not raw.strip():
                continue
            kind = _NUMBERS.get(name)
            if name == "metrics_from":
                given[name] = tuple(raw.split())
                continue
            try:
                value: Any = raw if kind is None else kind(raw)
            except ValueError:
                problems[name] = (f"{var}={raw!r} is not a valid "
                                  f"{'integer' if kind is int else 'number'}")
                continue
            if name == "log_level":
                value = value.upper()
            elif name == "control_pooling":
                value = value.strip().lower()
            problem = _problem(name, value)
            if problem is None:
                given[name] = value
            else:
                problems[name] = problem
        return cls(**given, _problems=problems)

    def with_options(self, **options: Any) -> Settings:
        """These settings with the options that were given (not None) put over them (an option
        given replaces a refused variable's value, and its refusal)."""
        given = {k: v for k, v in options.items() if v is not None}
        if not given:
            return self
        values = {f.name: object.__getattribute__(self, f.name)
                  for f in dataclasses.fields(self) if f.name != "_problems"}
        values.update(given)
        problems = {k: v for k, v in self._problems.items() if k not in given}
        return type(self)(**values, _problems=problems)


def _problem(name: str, value: Any) -> str | None:
    """Why ``value`` is refused for field ``name`` (its variable named), or None."""
    choices = _CHOICES.get(name)
    if choices is not None and value not in choices:
        return f"{_label(name)}={value!r}: expected one of {', '.join(choices)}"
    bounds = _BOUNDS.get(name)
    if bounds is not None and value is not None:
        low, high = bounds
        if value < low or (high is not None and value > high):
            span = f"at least {low:g}" + (f" and at most {high:g}" if high else "")
            return f"{_label(name)}={value!r}: must be {span}"
    return None


def _label(name: str) -> str:
    return f"{name} ({ENV[name]})" if name in ENV else name
