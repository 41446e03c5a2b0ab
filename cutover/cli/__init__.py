"""The ``cutover`` command line.

:mod:`cutover.cli.context` holds what commands share (Context, output, the error funnel); the
commands live in modules by theme; :mod:`cutover.cli.main` holds the click group and adds them.
``from cutover.cli import cli`` still gives the group (loaded on first use, so importing a
command module does not import the group).
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "cli":
        return importlib.import_module("cutover.cli.main").cli
    raise AttributeError(f"module 'cutover.cli' has no attribute {name!r}")
