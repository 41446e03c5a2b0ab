"""URL helpers: redaction, so a password never reaches a log, report or error."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@")
_PARAM = re.compile(r"(?i)(password|passwd|pwd)=([^&\s]+)")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_text(url)
    if not parts.password:  # none, or empty: nothing to hide
        return _PARAM.sub(r"\1=***", url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}"
    return _PARAM.sub(r"\1=***", urlunsplit((parts.scheme, netloc, parts.path, parts.query,
                                              parts.fragment)))


def _redact_text(text: str) -> str:
    return _PARAM.sub(r"\1=***", _USERINFO.sub(r"\g<scheme>\g<user>:***@", text))


def redact_text(text: str, *secrets: str) -> str:
    """Redact URL passwords anywhere in free text (an error message from a driver), and any of
    the given secrets."""
    out = _redact_text(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return out


def password_of(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""
