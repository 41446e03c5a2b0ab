"""The adapter's Lua scripts, loaded once from the ``lua/`` folder beside this module."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def source(name: str) -> str:
    """The text of ``lua/NAME.lua``."""
    return resources.files("cutover_rq").joinpath("lua", f"{name}.lua").read_text("utf-8")
