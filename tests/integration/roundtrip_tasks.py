"""A task that records exactly what RQ's own worker handed it, for the move-back round trip.

Importable by path (``tests.integration.roundtrip_tasks.capture``), so RQ workers resolve it.
"""

from __future__ import annotations

from typing import Any

import rq

from cutover.registry import TaskRegistry

registry = TaskRegistry()

#: job id -> what the running job looked like from inside the task
seen: dict[str, dict[str, Any]] = {}


@registry.task
def capture(a: Any, b: Any = None, *rest: Any, **extra: Any) -> str:
    job = rq.get_current_job()
    assert job is not None
    seen[job.id] = {
        "args": job.args, "kwargs": job.kwargs, "description": job.description,
        "timeout": job.timeout, "ttl": job.ttl, "result_ttl": job.result_ttl,
        "failure_ttl": job.failure_ttl, "meta": dict(job.meta),
        "call": (a, b, rest, extra),
    }
    return "ok"


@registry.task
def echo(*args: Any, **kwargs: Any) -> str:
    """The call as the task received it, types spelled out by repr (works under any worker:
    the result carries it)."""
    return repr((args, kwargs))
