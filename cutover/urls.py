"""URL helpers: redaction, so a password never reaches a log, report or error.

Passwords are found the conservative way. A URL's userinfo is everything between ``scheme://``
and the *last* ``@`` (not the first ``/``, as ``urlsplit`` has it), and its password everything
after the first ``:`` of that: so a password with an unencoded ``/``, ``?``, ``#``, ``@`` or
``:`` is still hidden whole. The price is that an ``@`` in a path or query can hide more than the
password; hiding too much is the safe side.

Some passwords cannot be found in free text at all (one with a space, cut by the driver's own
message into pieces). So the command line also registers the passwords of the URLs it was given
(:func:`hiding`), and :func:`redact_text` removes them wherever they appear, as written and
percent-decoded.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import unquote

_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
# password=... in a query string (up to & or whitespace) or a libpq conninfo ('quoted' or bare).
_PARAM = re.compile(r"(?i)(password|passwd|pwd)(\s*=\s*)('(?:[^'\\]|\\.)*'?|[^&\s]+)")
#: Characters that end the userinfo for some URL parsers and not for others.
AMBIGUOUS = "/?#@[] \t\r\n"

_hidden: tuple[str, ...] = ()
_hidden_lock = threading.Lock()


class UserInfo(NamedTuple):
    """A URL cut around its userinfo: ``prefix + user + ":" + password + "@" + rest``."""

    prefix: str
    user: str
    password: str | None  # None: no ":" in the userinfo
    rest: str


def userinfo(url: str) -> UserInfo | None:
    """The userinfo of ``url`` (None when it has none), cut at the last ``@``."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    after = url[match.end():]
    at = after.rfind("@")
    if at < 0:
        return None
    info, rest = after[:at], after[at + 1:]
    user, sep, password = info.partition(":")
    return UserInfo(match.group(0), user, password if sep else None, rest)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = userinfo(url)
    if parts is not None and parts.password:
        url = f"{parts.prefix}{parts.user}:***@{parts.rest}"
    return _PARAM.sub(r"\1\2***", url)


def password_of(url: str) -> str:
    """The password of ``url`` as written (percent-encoded if it was), or ``""``."""
    parts = userinfo(url)
    return (parts.password or "") if parts is not None else ""


def secrets_of(url: str | None) -> tuple[str, ...]:
    """Every spelling of the passwords in ``url`` a message might show: the userinfo's and the
    query's ``password=``, as written and percent-decoded."""
    if not url:
        return ()
    found = [password_of(url)]
    if "?" in url:
        found += [m.group(3).strip("'") for m in _PARAM.finditer(url.split("?", 1)[1])]
    public = redact(url)
    out: list[str] = []
    for secret in found:
        for spelling in (secret, unquote(secret), unquote(secret).strip()):
            # A "password" the URL shows anyway (postgres:postgres@) hides nothing, and hidden
            # everywhere it would turn every postgresql:// into ***ql://.
            if spelling and spelling not in out and spelling not in public:
                out.append(spelling)
    return tuple(out)


def ambiguity(url: str) -> str | None:
    """What in ``url``'s password URL parsers disagree about (a character that must be
    percent-encoded), or None. The message never contains the password."""
    parts = userinfo(url)
    if parts is None or not parts.password:
        return None
    for char in AMBIGUOUS:
        if char in parts.password:
            shown = {" ": "a space", "\t": "a tab", "\r": "a carriage return",
                     "\n": "a newline"}.get(char, repr(char))
            return (f"the password (between the first ':' and the last '@') contains {shown}, "
                    "which URL parsers read differently (as the end of the password, or as part "
                    f"of it): write it percent-encoded as %{ord(char):02X} (and any '@' after "
                    "the host as %40)")
    return None


@contextlib.contextmanager
def hiding(*urls: str | None) -> Iterator[None]:
    """While the block runs, :func:`redact_text` removes the passwords of these URLs from every
    text, in every thread (the command line wraps each command in this)."""
    global _hidden
    add = [s for url in urls for s in secrets_of(url)]
    with _hidden_lock:
        before = _hidden
        _hidden = tuple(sorted({*before, *add}, key=len, reverse=True))
    try:
        yield
    finally:
        with _hidden_lock:
            _hidden = before


def redact_text(text: str, *secrets: str) -> str:
    """Redact URL passwords anywhere in free text (an error message from a driver), the given
    secrets, and the passwords registered with :func:`hiding`."""
    out = text
    # Secrets first: a password with a space is whole only before the URLs are cut at spaces.
    for secret in sorted({*secrets, *_hidden}, key=len, reverse=True):
        if secret:
            out = out.replace(secret, "***")
    out = _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), out)
    return _PARAM.sub(r"\1\2***", out)

