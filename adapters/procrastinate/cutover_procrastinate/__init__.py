"""Procrastinate (PostgreSQL) adapter for queue-cutover."""

from cutover_procrastinate.backend import ProcrastinateBackend
from cutover_procrastinate.native import make_app

__all__ = ["ProcrastinateBackend", "make_app"]
