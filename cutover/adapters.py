"""Finding the adapter for a URL: by scheme, through the ``cutover.adapters`` entry points.

The core never imports an adapter by name; a third-party backend registers an entry point in the
same group and is found the same way.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any, cast
from urllib.parse import urlsplit

from cutover.backend import QueueBackend
from cutover.errors import ConfigurationError, UnknownAdapterError
from cutover.urls import ambiguity, redact

log = logging.getLogger("cutover.adapters")

GROUP = "cutover.adapters"

#: URL schemes that pick an adapter without an explicit ``ADAPTER+`` prefix.
SCHEMES: dict[str, str] = {
    "redis": "rq",
    "rediss": "rq",
    "unix": "rq",
    "postgresql": "procrastinate",
    "postgres": "procrastinate",
    "memory": "memory",
}

BackendFactory = Callable[..., QueueBackend]


@functools.cache
def available() -> dict[str, metadata.EntryPoint]:
    """The installed adapters by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


def load(name: str) -> BackendFactory:
    """The backend class registered under ``name``."""
    eps = available()
    if name not in eps:
        close = difflib.get_close_matches(name, list(eps), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownAdapterError(
            f"no adapter named {name!r} is installed (installed: {', '.join(sorted(eps))}){hint}")
    return cast(BackendFactory, eps[name].load())


def split(url: str) -> tuple[str, str]:
    """``(adapter name, url for the adapter)`` for a URL such as ``rq+redis://...``."""
    if "://" not in url:
        raise ConfigurationError(f"not a URL: {redact(url)!r} (expected e.g. redis://host:6379/0"
                                 " or postgresql://host/db)")
    problem = ambiguity(url)
    if problem:
        raise ConfigurationError(f"{redact(url)}: {problem}")
    try:
        urlsplit(url)  # what the drivers parse with: "[::1" (an unclosed IPv6 address)...
    except ValueError as exc:
        raise ConfigurationError(f"malformed URL {redact(url)}: {exc}") from exc
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if "+" in scheme:
        adapter, inner = scheme.split("+", 1)
        return adapter, f"{inner}://{rest}"
    if scheme in SCHEMES:
        return SCHEMES[scheme], url
    if scheme in available():
        return scheme, url
    known = sorted(set(SCHEMES) | set(available()))
    close = difflib.get_close_matches(scheme, known, n=1)
    hint = f"; did you mean {close[0]}://?" if close else ""
    raise UnknownAdapterError(f"no adapter handles the URL scheme {scheme!r} in "
                              f"{redact(url)!r} (known: {', '.join(known)}){hint}")


def open_backend(url: str, **options: Any) -> QueueBackend:
    """Open the backend a URL names."""
    name, inner = split(url)
    backend = load(name)(inner, **options)
    log.debug("opened %s backend at %s", name, backend.url)
    return backend
