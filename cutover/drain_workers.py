"""A drain split between processes (``cutover drain --workers N``).

One drain, N worker processes, each with its own connections and its own put and release
threads, each moving one share of the source (``QueueBackend.batches(partition=(k, N))``: a job's
share comes from its id). The parent process keeps what a single drain keeps — the pair lock, the
run record, recovery before the passes and the wait for running jobs after them — and
coordinates:

- a *pass* is started in every worker at once, and a new pass follows while the last one moved
  anything (as in a single process);
- within a pass the workers read the source **in step**, with two waits per window: each
  reads a window of ids (RQ's lists are read by position, head first) and waits until every
  worker has read it, so all of them read the same window; each then takes its own share and
  waits until every worker has taken theirs, so none reads the next window while another still
  changes the list. A backend that reads by position then re-anchors on a list that only it
  reads, and no job is skipped; jobs reach the target in the source's order to within a few
  windows (each worker's put stage may lag its reading by the pipeline's depth);
- progress lines add up the workers' counts; the operator's pause/stop switch is read by each
  worker between windows;
- a worker that fails stops the others (each finishes the batches it had taken) and the error
  is raised here; a worker that is killed (kill -9) is reported as such. Nothing is lost either
  way: what a worker had taken is held on the source or recorded in the ledger, and the next
  drain finishes it, as after a single drain killed at the same moment. Workers die with the
  parent (Linux: PR_SET_PDEATHSIG), so a killed drain leaves no worker running on.

Workers are forked (they inherit the task registry as it is loaded): they open their own
backends and control-plane connections and never touch the parent's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from cutover import adapters, errors
from cutover.control import ControlPlane
from cutover.errors import CutoverError
from cutover.runner import die_with_parent
from cutover.urls import redact_text, secrets_of

if TYPE_CHECKING:
    from cutover.drain import Drain

log = logging.getLogger("cutover.drain")


class _Aborted(Exception):
    """The parent told this worker to stop (another worker failed)."""


def run_passes(drain: Drain) -> None:
    """Run the drain's passes in ``drain.options.workers`` processes; merge their reports."""
    n = drain.options.workers
    context = multiprocessing.get_context("fork")
    conns: list[Connection] = []
    procs: list[multiprocessing.process.BaseProcess] = []
    try:
        for k in range(n):
            mine, theirs = context.Pipe()
            proc = context.Process(target=_worker, args=(drain, k, n, theirs, os.getpid()),
                                   name=f"cutover-drain-worker-{k}")
            proc.start()
            theirs.close()
            conns.append(mine)
            procs.append(proc)
        log.info("drain %s: %d worker processes", drain.run_id, n)
        _coordinate(drain, conns, procs)
    except BaseException:
        for conn in conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("abort",))
        raise
    finally:
        for worker in procs:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for conn in conns:
            conn.close()


def _coordinate(drain: Drain, conns: list[Connection],
                procs: list[multiprocessing.process.BaseProcess]) -> None:
    n = len(conns)
    index = {id(conn): k for k, conn in enumerate(conns)}
    moved = [0] * n
    done = [0] * n
    stopping = False
    while True:
        for k, conn in enumerate(conns):
            _send(conn, k, procs[k], ("pass",))
        active, arrived = set(range(n)), set()
        moved_in_pass = 0
        while active:
            if drain.stop_requested.is_set() and not stopping:
                # A signal reached the parent: the workers read the run's switch.
                drain.control.set_switch(drain.source_key, drain.target_key, "stop")
                stopping = True
            for ready in wait([conns[k] for k in active], timeout=0.5):
                k = index[id(ready)]
                message = _receive(conns[k], k, procs[k])
                kind = message[0]
                if kind == "window":
                    moved[k], done[k] = message[1], message[2]
                    arrived.add(k)
                elif kind == "passed":
                    moved_in_pass += message[1]
                    drain.report.stopped |= message[2]
                    moved[k], done[k] = message[3], message[4]
                    active.discard(k)
                    arrived.discard(k)
                elif kind == "error":
                    raise _rebuilt(k, message[1], message[2])
            if active and arrived >= active:
                for j in active:
                    _send(conns[j], j, procs[j], ("go",))
                arrived.clear()
            drain.progress(sum(moved), max(drain.total, sum(done)))
        if moved_in_pass == 0 or drain.report.stopped:
            break
    for k, conn in enumerate(conns):
        _send(conn, k, procs[k], ("end",))
    for k, conn in enumerate(conns):
        message = _receive(conn, k, procs[k])
        if message[0] == "error":
            raise _rebuilt(k, message[1], message[2])
        drain.merge(message[1])


def _receive(conn: Connection, k: int, proc: multiprocessing.process.BaseProcess) -> Any:
    try:
        return conn.recv()
    except (EOFError, OSError):
        raise _died(k, proc) from None


def _send(conn: Connection, k: int, proc: multiprocessing.process.BaseProcess,
          message: tuple[Any, ...]) -> None:
    try:
        conn.send(message)
    except OSError:  # the worker's end is closed: it died
        raise _died(k, proc) from None


def _died(k: int, proc: multiprocessing.process.BaseProcess) -> CutoverError:
    proc.join(timeout=5)
    code = proc.exitcode
    how = (f"was killed by signal {-code}" if code is not None and code < 0
           else f"exited with status {code}")
    return CutoverError(
        f"drain worker {k} (pid {proc.pid}) {how} before it finished. Nothing is lost: the "
        "jobs it had under way are held on the source or recorded in the ledger, and the next "
        "`cutover drain` finishes them")


def _rebuilt(k: int, kind: str, text: str) -> CutoverError:
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, CutoverError):
        return cls(f"drain worker {k}: {text}")
    return CutoverError(f"drain worker {k} failed: {kind}: {text}")


# -- in a worker ------------------------------------------------------------------------------
def _worker(parent: Drain, k: int, n: int, conn: Connection, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group, and a service manager may signal every process:
    # stopping is the parent's to decide (it flips the run's switch); a dead parent kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    drain: Drain | None = None
    try:
        drain = _worker_drain(parent, k, n)
        drain.barrier = lambda step: _barrier(drain, conn, step)
        while True:
            message = conn.recv()
            if message[0] == "pass":
                moved = drain.one_pass()
                conn.send(("passed", moved, drain.report.stopped, drain.report.moved,
                           drain.done))
            elif message[0] == "end":
                conn.send(("report", {"moved": drain.report.moved, "lost": drain.report.lost,
                                      "stopped": drain.report.stopped,
                                      "left": drain.report.left}))
                return
            else:  # abort
                return
    except (_Aborted, EOFError):
        return
    except BaseException as exc:  # reported to the parent, which raises it
        secrets = (*secrets_of(parent.source_url), *secrets_of(parent.target_url),
                   *secrets_of(parent.control.url))
        with contextlib.suppress(OSError):
            conn.send(("error", type(exc).__name__, redact_text(str(exc), *secrets)))
        sys.exit(2)
    finally:
        if drain is not None:
            for closable in (drain.source, drain.target, drain.control):
                with contextlib.suppress(Exception):
                    closable.close()


def _worker_drain(parent: Drain, k: int, n: int) -> Drain:
    """This worker's own drain: the parent's run and options, fresh connections."""
    from cutover.drain import Drain

    source = adapters.open_backend(parent.source_url)
    target = adapters.open_backend(parent.target_url)
    control = ControlPlane(parent.control.url, parent.control.schema)
    options = dataclasses.replace(parent.options)
    drain = Drain(source, parent.source_url, target, parent.target_url, control,
                  parent.registry, options)
    drain.run_id = drain.report.run_id = parent.run_id
    drain.partition = (k, n)
    return drain


def _barrier(drain: Drain, conn: Connection, step: str) -> None:
    """Tell the parent this worker has read the window (or taken its share of it); wait until
    every worker has."""
    conn.send(("window", drain.report.moved, drain.done, step))
    message = conn.recv()
    if message[0] != "go":
        raise _Aborted()
