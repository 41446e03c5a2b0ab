"""Where a worker runs a task: in its own thread, or in a child process it can stop.

A task is user code: it may raise anything (``SystemExit``, ``KeyboardInterrupt``,
``asyncio.CancelledError``...), hang in a C call, spin forever or kill its process. Whatever it
does, the worker must record an outcome for the job and keep running other jobs.

* :func:`call_task` runs a task in the calling thread and turns *any* ``BaseException`` it raises
  into a failed :class:`Outcome` with the traceback. Signals never reach it as exceptions: Python
  delivers them to the main thread, where the worker's handlers turn SIGTERM/SIGINT into a warm
  shutdown; worker threads and child processes only ever see exceptions the task raised.
* :class:`ProcessSlot` is a long-lived child process (forked once, so it inherits the task
  registry as loaded) that runs one job at a time sent over a pipe. Past the job's timeout the
  parent SIGKILLs it and forks a new one; a child that dies on its own (``os._exit``, a crash)
  is reported the same way. The child ignores SIGINT and SIGTERM (a Ctrl-C in a terminal or a
  SIGTERM to the whole process group means "finish the running jobs", which the parent decides)
  and dies with its parent.

Cost per no-op job (benchmarks/RESULTS.md, "Worker isolation"): a slot round trip is tens of
microseconds; forking a child per job (RQ's ``Worker``) costs milliseconds; running in the thread
costs nothing but cannot stop a hung task.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import inspect
import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from cutover.registry import TaskRegistry
from cutover.urls import redact_text

#: Stored in place of a result that cannot cross the pipe (not picklable).
UNPICKLABLE = "<the task's return value could not be pickled: {!r}>"


@dataclasses.dataclass
class Outcome:
    """What running a task once gave: a result, or an error with its traceback."""

    ok: bool
    result: Any = None
    #: The exception's last line (``ValueError: boom``), for logs and summaries.
    error: str | None = None
    #: The full traceback text, kept with the failed job (RQ's ``exc_info`` format).
    traceback: str | None = None
    timed_out: bool = False


def failure(exc: BaseException) -> Outcome:
    """The outcome of a task that raised ``exc`` (passwords in URLs redacted)."""
    summary = "".join(traceback.format_exception_only(exc)).strip()
    text = "".join(traceback.format_exception(exc)).rstrip()
    return Outcome(ok=False, error=redact_text(summary), traceback=redact_text(text))


def lost(error: str) -> Outcome:
    """A failed outcome with no Python traceback (timeout, dead child process)."""
    return Outcome(ok=False, error=error, traceback=error)


def timed_out(limit: float, how: str) -> Outcome:
    """The outcome of a job stopped (or given up on) at its timeout."""
    message = f"JobTimeoutError: the job ran longer than its timeout of {limit:g}s; {how}"
    return Outcome(ok=False, error=message, traceback=message, timed_out=True)


def call_task(func: Callable[..., Any], args: Sequence[Any],
              kwargs: Mapping[str, Any]) -> Outcome:
    """Run a task here; any ``BaseException`` it raises becomes a failed outcome."""
    try:
        result = func(*args, **dict(kwargs))
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except BaseException as exc:  # the task's own, whatever it is (see the module docstring)
        return failure(exc)
    return Outcome(ok=True, result=result)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(2)


def _serve(conn: Connection, registry: TaskRegistry, parent_pid: int) -> None:
    """The child's loop: receive (task name, args, kwargs), run, send the outcome back."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        name, args, kwargs = message
        try:
            func = registry.resolve(name).func
        except Exception as exc:
            outcome = failure(exc)
        else:
            outcome = call_task(func, args, kwargs)
        try:
            payload = pickle.dumps(outcome)
        except Exception as exc:
            outcome = Outcome(ok=outcome.ok, result=UNPICKLABLE.format(exc), error=outcome.error,
                              traceback=outcome.traceback)
            payload = pickle.dumps(outcome)
        conn.send_bytes(payload)


#: Seconds between checks that a child is still alive while it runs a job.
_LIVENESS = 0.25


def _answered(proc: multiprocessing.process.BaseProcess, conn: Connection,
              deadline: float | None) -> bool:
    """Wait for the child's answer: True when it came, False past ``deadline``; EOFError when
    the child died without one. Its liveness is checked by pid, not by end of file: a process
    the task forked (a helper, a multiprocessing child) holds the pipe open after the child
    died, and the death must be seen at once, not at the timeout (or never)."""
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return conn.poll(0)
        if conn.poll(_LIVENESS if left is None else min(left, _LIVENESS)):
            return True
        if not proc.is_alive():
            if conn.poll(0):  # it answered just before it exited
                return True
            raise EOFError


def _reap(proc: multiprocessing.process.BaseProcess, limit: float) -> None:
    """Wait up to ``limit`` seconds for a (killed) child to exit, by pid: ``join`` waits on a
    sentinel that a process the task forked may keep open long after the child is gone."""
    end = time.monotonic() + limit
    while proc.is_alive() and time.monotonic() < end:
        time.sleep(0.005)


class ProcessSlot:
    """A child process that runs jobs one at a time and can be killed on timeout."""

    def __init__(self, registry: TaskRegistry, name: str) -> None:
        self.registry = registry
        self.name = name
        self.spawned = 0
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def _spawn(self) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, self.registry, os.getpid()),
                           name=self.name, daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.spawned += 1
        return proc, parent

    def start(self) -> None:
        """Fork the child now (the worker does it before its threads start; a child killed on
        timeout is forked again by the next job)."""
        if self._conn is None:
            self._spawn()

    def run(self, task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
            timeout: float | None) -> Outcome:
        """Run one job in the child; past ``timeout`` seconds kill it and report a timeout."""
        proc, conn = (self._proc, self._conn) if self._conn is not None else self._spawn()
        assert proc is not None and conn is not None
        try:
            conn.send((task_name, tuple(args), dict(kwargs)))
        except (OSError, pickle.PicklingError) as exc:
            self.kill()
            return lost(f"could not hand the job to its worker process: {exc}")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if _answered(proc, conn, deadline):
                # Our own forked child wrote it (trusted, unlike a job payload).
                outcome: Outcome = pickle.loads(conn.recv_bytes())  # noqa: S301
                return outcome
        except (EOFError, OSError):
            _reap(proc, 5)
            code = proc.exitcode
            self.kill()
            how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exit code {code}")
            return lost(f"WorkerProcessDied: the job's worker process died ({how}) while "
                        "running it")
        self.kill()
        assert timeout is not None
        return timed_out(timeout, "its worker process was killed (SIGKILL)")

    def kill(self) -> None:
        """Stop the child at once (the next job forks a new one)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None and proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid or 0, signal.SIGKILL)
        if proc is not None:
            _reap(proc, 5)

    def close(self) -> None:
        """Let an idle child exit on its own."""
        proc, conn = self._proc, self._conn
        if conn is None or proc is None:
            return
        with contextlib.suppress(OSError):
            conn.send(None)
        _reap(proc, 5)
        self.kill()
