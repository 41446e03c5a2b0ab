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
    """One line a record, followed by the traceback of a failed job when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tb = getattr(record, "traceback", None)
        if isinstance(tb, str) and tb:
            text += "\n" + redact_text(tb)
        return text


def setup(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """Send the ``cutover`` logs to stderr."""
    logger = logging.getLogger("cutover")
    for handler in list(logger.handlers):
        if getattr(handler, "_cutover", False):
            logger.removeHandler(handler)
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
