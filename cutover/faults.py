"""Fault injection for the proof tests: ``CUTOVER_FAULT=step:N[,step:N]`` kills the process with
SIGKILL (a real kill -9) the N-th time it reaches ``step``. Unset, it costs one dict lookup."""

from __future__ import annotations

import os
import signal
from collections import Counter

_seen: Counter[str] = Counter()


def _plan() -> dict[str, int]:
    raw = os.environ.get("CUTOVER_FAULT", "")
    plan: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        step, _, nth = item.partition(":")
        plan[step] = int(nth or 1)
    return plan


def point(step: str) -> None:
    """Mark a step boundary; die here if the fault plan says so."""
    plan = _plan()
    if step not in plan:
        return
    _seen[step] += 1
    if _seen[step] == plan[step]:
        os.kill(os.getpid(), signal.SIGKILL)
