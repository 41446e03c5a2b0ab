"""queue-cutover: move background jobs between RQ and Procrastinate in stages, with proof."""

from cutover.backend import Capabilities, QueueBackend, TakeResult
from cutover.errors import CutoverError
from cutover.memory import InMemoryBackend
from cutover.record import JobRecord, JobState
from cutover.registry import Task, TaskRegistry
from cutover.router import Call, Router

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
