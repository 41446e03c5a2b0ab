"""Procrastinate (PostgreSQL) adapter for queue-cutover."""

from cutover_procrastinate.backend import ProcrastinateBackend

__all__ = ["ProcrastinateBackend"]
