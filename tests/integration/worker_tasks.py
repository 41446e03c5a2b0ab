"""Tasks that misbehave, for the worker's isolation tests (importable: ``--app
tests.integration.worker_tasks:registry``)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from cutover.registry import TaskRegistry

registry = TaskRegistry()

#: Thread isolation only: when each attempt of ``fail_once`` started (monotonic), by key.
starts: dict[str, list[float]] = {}
_lock = threading.Lock()
#: Set by a test to let ``sleep_until_released`` return (so no thread outlives its test).
release = threading.Event()


@registry.task(name="w.double")
def double(n: int) -> int:
    return n * 2


@registry.task(name="w.exit")
def exit_task() -> None:
    raise SystemExit(0)


@registry.task(name="w.interrupt")
def interrupt() -> None:
    raise KeyboardInterrupt


@registry.task(name="w.cancelled")
async def cancelled() -> None:
    raise asyncio.CancelledError


@registry.task(name="w.generator_exit")
def generator_exit() -> None:
    raise GeneratorExit


@registry.task(name="w.die")
def die() -> None:
    os._exit(3)


@registry.task(name="w.hang", timeout=1)
def hang() -> None:
    time.sleep(3600)


@registry.task(name="w.spin", timeout=1)
def spin() -> None:
    while True:
        pass


@registry.task(name="w.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@registry.task(name="w.sleep_until_released", timeout=0.5)
def sleep_until_released() -> None:
    release.wait(30)


@registry.task(name="w.boom")
def boom(message: str) -> None:
    raise ValueError(message)


@registry.task(name="w.fail_once", max_attempts=2, backoff=1)
def fail_once(key: str) -> str:
    with _lock:
        starts.setdefault(key, []).append(time.monotonic())
        n = len(starts[key])
    if n == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


@registry.task(name="w.a_set")
def a_set() -> set[int]:
    """A return value RQ's JSONSerializer cannot write."""
    return {1, 2}


@registry.task(name="w.fork_helper")
def fork_helper(seconds: float) -> int:
    """Leaves a forked helper process running ``seconds`` (as a task using os.fork or a
    multiprocessing child would): it holds every descriptor its parent had."""
    pid = os.fork()
    if pid == 0:
        time.sleep(seconds)
        os._exit(0)
    return pid


@registry.task(name="w.fork_and_die")
def fork_and_die(seconds: float) -> None:
    """Forks a helper that outlives the task, then dies at once."""
    fork_helper(seconds)
    os._exit(3)
