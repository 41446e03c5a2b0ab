"""SQL in .sql files as named blocks, loaded once."""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any, LiteralString, cast

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@functools.cache
def _load(filename: str) -> dict[str, str]:
    text = resources.files("cutover_procrastinate").joinpath("sql", filename).read_text("utf-8")
    parts = _NAME.split(text)
    return {name: body.strip().rstrip(";") for name, body in
            zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> LiteralString:
    """The named block of ``queries.sql``."""
    text: Any = _load("queries.sql")[name]
    return cast(LiteralString, text)


def schema() -> LiteralString:
    """The adapter's own tables (idempotent DDL)."""
    text: Any = resources.files("cutover_procrastinate").joinpath("sql", "schema.sql").read_text(
        "utf-8")
    return cast(LiteralString, text)
