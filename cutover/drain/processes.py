"""A process group for a drain split between processes (``cutover drain --workers N``).

Generic: it knows nothing of :class:`~cutover.drain.Drain`. The caller gives a factory that
builds each worker's member (complete, in the forked child) and callbacks for progress and
stop; members exchange typed messages with the parent and send their share as a
:class:`~cutover.drain.DrainReport`.

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

Workers are forked (they inherit the task registry as it is loaded): the factory opens their
own backends and control-plane connections and never touches the parent's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Protocol

from cutover import errors
from cutover.drain.report import DrainReport
from cutover.errors import CutoverError
from cutover.runner import die_with_parent
from cutover.urls import redact_text

log = logging.getLogger("cutover.drain")


# -- messages ---------------------------------------------------------------------------------
# parent -> worker
@dataclasses.dataclass(frozen=True)
class StartPass:
    """Run one pass over this worker's share."""


@dataclasses.dataclass(frozen=True)
class Go:
    """Every worker has reached the barrier: carry on."""


@dataclasses.dataclass(frozen=True)
class End:
    """No more passes: send your report."""


@dataclasses.dataclass(frozen=True)
class Abort:
    """Stop now (another worker failed)."""


# worker -> parent
@dataclasses.dataclass(frozen=True)
class Window:
    """This worker reached a barrier (read a window, or took its share of it)."""
    moved: int
    done: int


@dataclasses.dataclass(frozen=True)
class Passed:
    """This worker finished a pass."""
    moved_in_pass: int
    stopped: bool
    moved: int
    done: int


@dataclasses.dataclass(frozen=True)
class Finished:
    """This worker's share of the run."""
    report: DrainReport


@dataclasses.dataclass(frozen=True)
class Failed:
    """This worker failed: the error's class name (in cutover.errors) and redacted text."""
    kind: str
    text: str


Barrier = Callable[[int, int], None]  # (moved, done) -> returns when every worker is there


class Member(Protocol):
    """What a worker process runs: passes over its share, then its report."""
    report: DrainReport
    done: int

    def one_pass(self) -> int: ...

    def close(self) -> None: ...


MemberFactory = Callable[[int, int, Barrier], Member]  # (k, n, barrier), called in the child


class _Aborted(Exception):
    """The parent told this worker to stop (another worker failed)."""


@dataclasses.dataclass
class Group:
    """``n`` worker processes, each running the member ``make`` builds for its share."""
    n: int
    make: MemberFactory
    progress: Callable[[int, int], None]  # (moved, max(total, done)) over all workers
    total: int
    stop_requested: threading.Event  # set in the parent (a signal): ``on_stop`` is called once
    on_stop: Callable[[], None]
    secrets: tuple[str, ...]  # redacted from what a worker's error says
    name: str = "drain"

    def run(self) -> tuple[bool, list[DrainReport]]:
        """Run passes in every worker until one moves nothing or the run stops. Returns whether
        it stopped, and each worker's report."""
        context = multiprocessing.get_context("fork")
        conns: list[Connection] = []
        procs: list[multiprocessing.process.BaseProcess] = []
        try:
            for k in range(self.n):
                mine, theirs = context.Pipe()
                proc = context.Process(target=self._worker, args=(k, theirs, os.getpid()),
                                       name=f"cutover-drain-worker-{k}")
                proc.start()
                theirs.close()
                conns.append(mine)
                procs.append(proc)
            log.info("%s: %d worker processes", self.name, self.n)
            return self._coordinate(conns, procs)
        except BaseException:
            for conn in conns:
                with contextlib.suppress(OSError, ValueError):
                    conn.send(Abort())
            raise
        finally:
            for worker in procs:
                worker.join(timeout=30)
                if worker.is_alive():
                    worker.kill()
                    worker.join()
            for conn in conns:
                conn.close()

    def _coordinate(self, conns: list[Connection],
                    procs: list[multiprocessing.process.BaseProcess]
                    ) -> tuple[bool, list[DrainReport]]:
        n = len(conns)
        index = {id(conn): k for k, conn in enumerate(conns)}
        moved = [0] * n
        done = [0] * n
        stopping = stopped = False
        while True:
            for k, conn in enumerate(conns):
                _send(conn, k, procs[k], StartPass())
            active, arrived = set(range(n)), set()
            moved_in_pass = 0
            while active:
                if self.stop_requested.is_set() and not stopping:
                    self.on_stop()  # a signal reached the parent: the workers read the switch
                    stopping = True
                for ready in wait([conns[k] for k in active], timeout=0.5):
                    k = index[id(ready)]
                    message = _receive(conns[k], k, procs[k])
                    if isinstance(message, Window):
                        moved[k], done[k] = message.moved, message.done
                        arrived.add(k)
                    elif isinstance(message, Passed):
                        moved_in_pass += message.moved_in_pass
                        stopped |= message.stopped
                        moved[k], done[k] = message.moved, message.done
                        active.discard(k)
                        arrived.discard(k)
                    elif isinstance(message, Failed):
                        raise _rebuilt(k, message)
                if active and arrived >= active:
                    for j in active:
                        _send(conns[j], j, procs[j], Go())
                    arrived.clear()
                self.progress(sum(moved), max(self.total, sum(done)))
            if moved_in_pass == 0 or stopped:
                break
        for k, conn in enumerate(conns):
            _send(conn, k, procs[k], End())
        reports = []
        for k, conn in enumerate(conns):
            message = _receive(conn, k, procs[k])
            if isinstance(message, Failed):
                raise _rebuilt(k, message)
            if not isinstance(message, Finished):
                raise CutoverError(f"drain worker {k} sent {message!r} instead of its report")
            reports.append(message.report)
        return stopped, reports

    # -- in a worker --------------------------------------------------------------------------
    def _worker(self, k: int, conn: Connection, parent_pid: int) -> None:
        die_with_parent(parent_pid)
        # Ctrl-C reaches the whole process group, and a service manager may signal every
        # process: stopping is the parent's to decide (it flips the run's switch); a dead parent
        # kills us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        member: Member | None = None

        def barrier(moved: int, done: int) -> None:
            """Tell the parent this worker has read the window (or taken its share of it);
            wait until every worker has."""
            conn.send(Window(moved, done))
            if not isinstance(conn.recv(), Go):
                raise _Aborted()

        try:
            member = self.make(k, self.n, barrier)
            while True:
                message = conn.recv()
                if isinstance(message, StartPass):
                    moved = member.one_pass()
                    conn.send(Passed(moved, member.report.stopped, member.report.moved,
                                     member.done))
                elif isinstance(message, End):
                    conn.send(Finished(member.report))
                    return
                else:  # Abort
                    return
        except (_Aborted, EOFError):
            return
        except BaseException as exc:  # reported to the parent, which raises it
            with contextlib.suppress(OSError):
                conn.send(Failed(type(exc).__name__, redact_text(str(exc), *self.secrets)))
            sys.exit(2)
        finally:
            if member is not None:
                with contextlib.suppress(Exception):
                    member.close()


def _receive(conn: Connection, k: int, proc: multiprocessing.process.BaseProcess
             ) -> Window | Passed | Finished | Failed:
    try:
        message: Window | Passed | Finished | Failed = conn.recv()
    except (EOFError, OSError):
        raise _died(k, proc) from None
    return message


def _send(conn: Connection, k: int, proc: multiprocessing.process.BaseProcess,
          message: StartPass | Go | End | Abort) -> None:
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


def _rebuilt(k: int, failure: Failed) -> CutoverError:
    cls = getattr(errors, failure.kind, None)
    if isinstance(cls, type) and issubclass(cls, CutoverError):
        return cls(f"drain worker {k}: {failure.text}")
    return CutoverError(f"drain worker {k} failed: {failure.kind}: {failure.text}")
