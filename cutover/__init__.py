"""queue-cutover: move background jobs between RQ and Procrastinate in stages, with proof.

The names below are imported on first use (PEP 562): ``import cutover`` (which every
``cutover`` command and every submodule import runs first) does not load the Router's control
plane, psycopg, redis or procrastinate; ``from cutover import Router`` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cutover.backend import Capabilities, QueueBackend, TakeResult
    from cutover.errors import CutoverError
    from cutover.memory import InMemoryBackend
    from cutover.record import JobRecord, JobState
    from cutover.registry import Task, TaskRegistry
    from cutover.router import Call, Router

#: Each public name -> the module that defines it.
_LAZY = {
    "Call": "cutover.router",
    "Capabilities": "cutover.backend",
    "CutoverError": "cutover.errors",
    "InMemoryBackend": "cutover.memory",
    "JobRecord": "cutover.record",
    "JobState": "cutover.record",
    "QueueBackend": "cutover.backend",
    "Router": "cutover.router",
    "TakeResult": "cutover.backend",
    "Task": "cutover.registry",
    "TaskRegistry": "cutover.registry",
}

__all__ = [
    "Call",
    "Capabilities",
    "CutoverError",
    "InMemoryBackend",
    "JobRecord",
    "JobState",
    "QueueBackend",
    "Router",
    "TakeResult",
    "Task",
    "TaskRegistry",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cutover' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later reads are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
