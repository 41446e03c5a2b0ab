"""Procrastinate (PostgreSQL) adapter for queue-cutover.

``make_app`` (procrastinate's own App) is imported on first use: the adapter's backend, which a
``cutover`` worker or drain opens, does not import procrastinate (start-up time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cutover_procrastinate.backend import ProcrastinateBackend

if TYPE_CHECKING:
    from cutover_procrastinate.native import make_app

__all__ = ["ProcrastinateBackend", "make_app"]


def __getattr__(name: str) -> Any:
    if name == "make_app":
        from cutover_procrastinate.native import make_app

        return make_app
    raise AttributeError(f"module 'cutover_procrastinate' has no attribute {name!r}")
