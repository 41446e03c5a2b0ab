"""Logging under the ``cutover`` logger: to stderr, as text or JSON, with passwords redacted."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Literal

from cutover.urls import redact_text

_FIELDS = ("job_id", "task", "backend", "event", "worker", "traceback")


class RedactingFilter(logging.Filter):
    """Scrub URL passwords from every message, whatever code produced it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            if hasattr(record, name):
                doc[name] = getattr(record, name)
        if isinstance(doc.get("traceback"), str):
            doc["traceback"] = redact_text(str(doc["traceback"]))
        if record.exc_info:
            doc["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """One line a record, followed by the traceback of a failed job when there is one; all of it
    redacted (an exception's traceback another handler formatted first is cached unredacted)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tb = getattr(record, "traceback", None)
        if isinstance(tb, str) and tb:
            text += "\n" + tb
        return redact_text(text)


def setup(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """Send the ``cutover`` logs to stderr, and the warnings of the libraries under it (psycopg's
    pool, redis-py...) through the same redaction and format."""
    logger = logging.getLogger("cutover")
    root = logging.getLogger()
    for owner in (logger, root):
        for handler in list(owner.handlers):
            if getattr(handler, "_cutover", False):
                owner.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._cutover = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    # Without a handler of ours, a library's warning would reach stderr through logging's
    # last resort, unredacted (psycopg's pool logs every failed connection attempt).
    libraries = logging.StreamHandler(sys.stderr)
    libraries._cutover = True  # type: ignore[attr-defined]
    libraries.setLevel(logging.WARNING)
    libraries.addFilter(RedactingFilter())
    libraries.setFormatter(handler.formatter)
    root.addHandler(libraries)
