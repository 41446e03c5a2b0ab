"""The worker loop, written once for every backend.

A worker claims a runnable job through the backend (atomically: no other worker of any kind can
start it), resolves its task in the registry, runs it, and records the outcome. Retries follow the
job's own budget and backoff, so they behave the same on every backend. A job whose payload was
quarantined or whose task is unknown is reported once and left where it is, never retried.

Tasks run where they can be stopped (cutover.runner): with ``isolation="process"`` each worker
thread hands its jobs to a long-lived child process, killed and forked again when a job passes
its timeout; with ``isolation="thread"`` tasks run in the worker's threads (their side effects
are visible in-process, as tests and embedding want) and a watchdog fails a job that passes its
timeout, then stops the worker so that its supervisor starts a fresh one (the hung thread cannot
be stopped from outside). Either way any ``BaseException`` a task raises fails (or retries) its
job like an error, with its traceback logged and stored; only a real SIGTERM/SIGINT sent to the
worker process means shutdown.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Literal

from cutover.backend import Acceptor, QueueBackend, TxHook
from cutover.control.claims import Claim, ClaimState
from cutover.control.plane import RETRY_WAITS
from cutover.errors import BackendUnavailableError, CutoverError, PhaseUnknownError
from cutover.fence import GateConfig, PhaseGate
from cutover.metrics import METRICS, Metrics
from cutover.phases import Mode
from cutover.record import JobRecord, JobState
from cutover.registry import Task, TaskRegistry
from cutover.runner import Outcome, ProcessSlot, call_task, timed_out

log = logging.getLogger("cutover.worker")


@dataclasses.dataclass
class WorkerReport:
    """What a worker did."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    recovered: list[str] = dataclasses.field(default_factory=list)
    #: Jobs failed by the watchdog whose thread still runs the task (thread isolation): the
    #: worker stopped so that its supervisor starts a fresh process.
    abandoned: list[str] = dataclasses.field(default_factory=list)
    #: Phase-aware workers (cutover.fence): copies removed as duplicates of a copy that ran on
    #: the other side, and target copies dry-run in shadow (never executed).
    duplicates: int = 0
    shadowed: int = 0

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed + self.retried


Isolation = Literal["process", "thread"]


def effective_timeout(job: JobRecord, task: Task, default: float | None) -> float | None:
    """The job's own limit (RQ's job timeout, also remembered in ``native["rq"]`` by a job
    moved off RQ), else its task's, else the worker's; a limit of 0 or less (RQ's -1) means
    none."""
    remembered = job.native.get("rq", {}).get("timeout") if job.native else None
    own = job.timeout if job.timeout is not None else remembered
    for limit in (own, task.timeout, default):
        if isinstance(limit, int | float):
            return limit if limit > 0 else None
    return None


class Worker:
    """Runs registry tasks from one backend with ``concurrency`` threads.

    ``timeout``: seconds a job may run when neither the job nor its task sets a limit (None: no
    limit). ``isolation``: ``"process"`` (a child process per thread, killed on timeout) or
    ``"thread"`` (in-process; a timed-out job is failed and the worker stops, see the module
    docstring). ``metrics``: where claims, in-flight jobs and outcomes are counted per backend
    (this process's :data:`cutover.metrics.METRICS` unless given another).

    ``gate``: the staged cut-over's phase and fence (:mod:`cutover.fence`); without one the
    worker runs every job. Who closes it is who built it:

    - a :class:`~cutover.fence.GateConfig`: the worker builds its :class:`PhaseGate` when
      :meth:`run` starts and closes it when :meth:`run` returns (or raises): its heartbeat
      thread, its watcher and their connections end, and it leaves the fleet;
    - a :class:`PhaseGate` handed in stays the caller's: :meth:`run` leaves it open (the caller
      may read it afterwards, or run the worker again with it) and the caller closes it, which
      it must: until then the gate heartbeats a fleet member for a worker that no longer runs.

    Either way the control plane is the caller's, and each thread :meth:`run` starts closes its
    own control-plane connection as it ends.
    """

    def __init__(self, backend: QueueBackend, registry: TaskRegistry, *,
                 queues: Sequence[str] | None = None, concurrency: int = 1, burst: bool = False,
                 poll_interval: float = 0.5, stalled_after: float = 60.0,
                 heartbeat_interval: float = 10.0, name: str | None = None,
                 timeout: float | None = None, isolation: Isolation = "thread",
                 metrics: Metrics | None = None,
                 gate: PhaseGate | GateConfig | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if isolation not in ("process", "thread"):
            raise ValueError(f"isolation must be 'process' or 'thread', not {isolation!r}")
        self.backend = backend
        self.registry = registry
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.burst = burst
        self.poll_interval = poll_interval
        self.stalled_after = stalled_after
        self.heartbeat_interval = heartbeat_interval
        self.name = name or f"cutover.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.report = WorkerReport()
        self.metrics = METRICS if metrics is None else metrics
        #: The gate the worker runs with: the one handed in, or the one it built from a
        #: GateConfig (from run()'s start on; closed when run() returns).
        self.gate: PhaseGate | None = gate if isinstance(gate, PhaseGate) else None
        self._gate_config = gate if isinstance(gate, GateConfig) else None
        if self.gate is not None and self.gate.metrics is None:
            self.gate.metrics = self.metrics
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._local = threading.local()  # each loop thread's job, and whether it ran
        self._signals = 0
        self._error: CutoverError | None = None
        self.timeout = timeout
        self.isolation: Isolation = isolation
        self._slots: list[ProcessSlot] = []
        # Thread isolation: jobs running with a deadline, by thread name (read by the watchdog),
        # and the threads whose job the watchdog failed (their outcome is dropped).
        self._deadlines: dict[str, tuple[JobRecord, float, float]] = {}
        self._abandoned: set[str] = set()
        # The earliest retry this worker scheduled (monotonic): an idle thread wakes up for it
        # instead of sleeping a whole poll interval past it.
        self._next_retry: float | None = None

    # -- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to finish the jobs it runs and exit (a warm shutdown)."""
        self._stop.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("worker %s got %s: finishing running jobs, then exiting (send it again to "
                     "exit now)", self.name, name)
            self.stop()
        else:
            log.warning("worker %s got %s again: exiting now; running jobs stay 'started' "
                        "until a worker recovers them as stalled", self.name, name)
            # 2 as the drain's second signal (an interrupted command); 1 is verify's "found
            # loss", which a supervisor or script must not read here.
            raise SystemExit(2)

    # -- running ---------------------------------------------------------------------------
    def run(self, install_signal_handlers: bool = True) -> WorkerReport:
        """Work until stopped (or, with ``burst``, until nothing runnable is left)."""
        previous: dict[signal.Signals, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        log.info("worker %s started on %s (queues: %s, concurrency %d%s)", self.name,
                 self.backend.url, ", ".join(self.queues) if self.queues else "all",
                 self.concurrency, ", burst" if self.burst else "")
        built: PhaseGate | None = None
        helpers: list[threading.Thread] = []
        try:
            if self._gate_config is not None:
                self.gate = built = self._gate_config.open(self.backend, self.metrics)
            self.backend.heartbeat(self.name)
            if self.gate is not None:
                # Now that the backend registered this worker in its own registry (procrastinate
                # does), the fleet learns its ids: they are not native workers.
                self.gate.beat()
            self._recover()
            if self.isolation == "process":
                # Forked before this worker's own threads start (fewer locks that a fork could
                # copy while held).
                self._slots = [ProcessSlot(self.registry, f"{self.name}-slot-{i}")
                               for i in range(self.concurrency)]
                for slot in self._slots:
                    slot.start()
            helpers.append(threading.Thread(target=self._releasing, args=(self._beat,),
                                            name=f"{self.name}-heartbeat", daemon=True))
            if self.isolation == "thread":
                helpers.append(threading.Thread(target=self._releasing, args=(self._watchdog,),
                                                name=f"{self.name}-watchdog", daemon=True))
            for t in helpers:
                t.start()
            threads = [threading.Thread(target=self._releasing, args=(self._loop, i),
                                        name=f"{self.name}-{i}", daemon=True)
                       for i in range(self.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive() and t.name not in self._abandoned:
                    t.join(timeout=0.2)
        finally:
            self._stop.set()
            for t in helpers:  # they end at once on _stop (a recovery under way finishes)
                t.join(timeout=max(self.heartbeat_interval, 5.0))
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for slot in self._slots:
                slot.close() if self._signals < 2 else slot.kill()
            if built is not None:
                built.close()
        log.info("worker %s stopped: %d succeeded, %d failed, %d retried, %d skipped",
                 self.name, self.report.succeeded, self.report.failed, self.report.retried,
                 len(self.report.skipped))
        if self.report.abandoned:
            log.error("worker %s stopped because job(s) %s passed their timeout in thread "
                      "isolation (failed; their threads could not be stopped): restart the "
                      "worker, or use process isolation", self.name,
                      ", ".join(self.report.abandoned))
        if self._error is not None:
            raise self._error
        return self.report

    def _releasing(self, target: Callable[..., None], *args: Any) -> None:
        """Run one of the worker's threads; as it ends, close the control-plane connection it
        opened (the gate's calls open one per thread)."""
        try:
            target(*args)
        finally:
            if self.gate is not None:
                self.gate.control.close_thread()

    def _recover(self) -> None:
        recovered = self.backend.recover_stalled(self.stalled_after)
        if recovered:
            log.warning("recovered %d stalled job(s) of dead workers: %s", len(recovered),
                        ", ".join(recovered))
            with self._lock:
                self.report.recovered.extend(recovered)
            if self.gate is not None:
                self._settle_recovered(self.gate, recovered)

    def _settle_recovered(self, gate: PhaseGate, recovered: list[str]) -> None:
        """Recovery counted each dead worker's attempt (failed for good or retried); a copy
        whose fence claim ended (it ran on the other side, or here before the backend's
        record) is a duplicate: removed, as the fence removes one it claims."""
        for job_id in recovered:
            job = self.backend.get(job_id)
            claim = gate.finished_claim(job_id, job) if job is not None else None
            if claim is None or job is None:
                continue
            gate.duplicate(job, claim)
            with self._lock:
                self.report.duplicates += 1

    def _beat(self) -> None:
        """Heartbeat, and put back the jobs of workers that died, while the worker runs."""
        last_recovery = time.monotonic()
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self.backend.heartbeat(self.name)
                if time.monotonic() - last_recovery >= self.stalled_after:
                    last_recovery = time.monotonic()
                    self._recover()
            except CutoverError as exc:
                log.error("heartbeat of worker %s failed: %s", self.name, exc)

    def _watchdog(self) -> None:
        """Thread isolation: fail jobs past their deadline, then stop the worker."""
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            with self._lock:
                late = [(name, job, limit) for name, (job, deadline, limit)
                        in self._deadlines.items() if deadline <= now]
                for name, job, _ in late:
                    del self._deadlines[name]
                    self._abandoned.add(name)
                    self.report.abandoned.append(job.id)
            for _, job, limit in late:
                self._stop.set()
                try:
                    self._record(job, self.registry.resolve(job.task), timed_out(
                        limit, "thread isolation: its thread could not be stopped; the worker "
                        "stops so that its supervisor starts a fresh one"))
                except CutoverError as exc:
                    log.error("could not record the timeout of job %s: %s", job.id, exc)
            with self._lock:
                if self._stop.is_set() and not self._deadlines:
                    return

    def _idle_wait(self) -> None:
        wait = self.poll_interval
        with self._lock:
            due = self._next_retry
            if due is not None and due <= time.monotonic():
                self._next_retry = due = None
        if due is not None:
            wait = min(wait, max(due - time.monotonic(), 0.005))
        self._stop.wait(wait)

    def _loop(self, index: int) -> None:
        failures = 0  # in a row: connections lost (the backend's, or the plane's after its
        # own retries) while this thread held no job it had run
        try:
            while not self._stop.is_set():
                self._local.job, self._local.ran = None, False
                self._local.unfinished = None
                try:
                    if not self._one(index):
                        return
                    failures = 0
                except BackendUnavailableError as exc:
                    # A blip is survived: a job claimed and not run yet is given back (waiting,
                    # no attempt used) and the loop goes on after a wait, a few times in a row.
                    # Not a job that ran (its outcome could not be recorded, after retries: it
                    # stays started for recovery, which needs this worker gone), nor a phase
                    # unread for too long, nor a plane that stays away: the worker stops.
                    failures += 1
                    if (self._local.ran or isinstance(exc, PhaseUnknownError)
                            or failures > len(RETRY_WAITS)):
                        raise
                    job: JobRecord | None = self._local.job
                    back = job is not None and self._give_back(job)
                    wait = RETRY_WAITS[failures - 1]
                    log.warning("worker %s: %s%s; going on in %.2fs", self.name, exc,
                                f" (job {job.id} given back, waiting)"
                                if back and job is not None else "", wait,
                                extra={"event": "blip"})
                    self._stop.wait(wait)
        except CutoverError as exc:
            # The backend or the control plane went away (the plane's statements are retried
            # first: cutover.control.plane; then the loop above): stop taking work, every
            # thread, and report it. The jobs other threads run are finished and recorded (a
            # claim's finish is retried with its lease extended: PhaseGate.finish); a job whose
            # fence claim could not be made was given back to its queue; one whose outcome
            # could not be recorded stays "started", recovered as stalled by the next worker.
            log.error("worker %s stops: %s", self.name, exc)
            with self._lock:
                self._error = self._error or exc
            self._stop.set()

    def _one(self, index: int) -> bool:
        """One job (or none): False when a burst worker is done."""
        # The mode is read between jobs: a job runs to its end in the mode it was claimed in.
        mode, fenced = (Mode.EXECUTE, False) if self.gate is None else self.gate.mode()
        if mode is Mode.IDLE:
            if self.burst:
                return False
            self._idle_wait()
            return True
        accept = self._accept if mode is not Mode.DRY else self._dry_accept
        claim: Claim | None = None
        if self.gate is not None and fenced and self.gate.joined is not None:
            job, claim = self._claim_joined(self.gate, accept)
        else:
            job = self.backend.claim(self.queues, self.name, accept)
        if job is None:
            if self.burst:
                return False
            self._idle_wait()
            return True
        self._local.job = job
        self.metrics.claimed(self.backend.name, job)  # timed until released
        try:
            if self.gate is not None and mode is Mode.DRY:
                self.gate.dry_run(job, self.registry)
                with self._lock:
                    self.report.shadowed += 1
            elif self.gate is not None and fenced:
                if claim is None:
                    claim = self._fence_claim(self.gate, job)
                self._fenced(self.gate, job, index, claim)
            else:
                self._execute(job, index)
        finally:
            self.metrics.released(self.backend.name)
        unfinished: CutoverError | None = getattr(self._local, "unfinished", None)
        if unfinished is not None:
            log.error("job %s: its outcome is recorded, but its fence claim could not be "
                      "finished (%s): the worker stops; the other copy may run the job again "
                      "once the claim's lease lapses", job.id, unfinished,
                      extra={"job_id": job.id, "event": "claim_unfinished"})
            raise unfinished
        return True

    def _give_back(self, job: JobRecord) -> bool:
        """Put a job this worker claimed and has not run back to waiting, no attempt used (the
        backend's optional ``unclaim(job, worker)``); False when it could not."""
        unclaim: Callable[[JobRecord, str], bool] | None = getattr(self.backend, "unclaim",
                                                                   None)
        if unclaim is None:
            return False
        try:
            return unclaim(job, self.name)
        except CutoverError as exc:
            log.error("job %s: could not give it back: %s", job.id, exc)
            return False

    def _claim_joined(self, gate: PhaseGate, accept: Acceptor
                      ) -> tuple[JobRecord | None, Claim | None]:
        """The job and its fence claim in one transaction of the backend's (its database
        holds the control plane: cutover.fence). A connection lost in it rolls both back (the
        job stays waiting, no attempt used): the claim is tried again, as the plane's own
        statements are (bounded, :data:`~cutover.control.plane.RETRY_WAITS`)."""
        assert gate.joined is not None
        waits = iter(RETRY_WAITS)
        claims: list[Claim] = []
        while True:
            claims.clear()
            try:
                job = gate.joined.claim_tx(self.queues, self.name, accept,
                                           lambda conn, j: claims.append(gate.claim(j, conn)))
            except BackendUnavailableError as exc:
                wait = next(waits, None)
                if wait is None or self._stop.is_set():
                    raise
                log.warning("claiming a job with its fence claim failed (%s): nothing was "
                            "claimed; trying again in %.2fs", exc, wait,
                            extra={"event": "control_retry"})
                time.sleep(wait)
                continue
            return job, claims[0] if claims else None

    def _fence_claim(self, gate: PhaseGate, job: JobRecord) -> Claim:
        """``job``'s fence claim (the backend claimed it already). When the control plane
        cannot be reached (after the plane's retries) the job is given back to its queue as it
        was, without using an attempt (the backend's optional ``unclaim(job, worker)``), and
        the error stops the worker: a claim that could not be made never fails a job."""
        try:
            return gate.claim(job)
        except CutoverError as exc:
            back = self._give_back(job)
            log.error("job %s: its fence claim could not be made (%s); %s", job.id, exc,
                      "given back to its queue, waiting (no attempt used)" if back else
                      "it stays started, recovered as stalled by the next worker",
                      extra={"job_id": job.id, "event": "claim_unreachable"})
            raise

    def _fenced(self, gate: PhaseGate, job: JobRecord, index: int,
                claim: Claim | None = None) -> None:
        """Run ``job`` if this copy wins its claim (``claim``: made as the job was claimed);
        a duplicate is removed; a copy whose claim another member holds waits for that
        claim's end or its lease's expiry."""
        claim = gate.claim(job) if claim is None else claim
        if not claim.won and not claim.finished:
            log.info("job %s is claimed on the %s until %s: waiting", job.id, claim.side,
                     claim.lease_until.isoformat(), extra={"job_id": job.id, "event": "fenced"})
            waited = gate.wait(job, claim, self._stop)
            if waited is None:  # stopping: given back (no attempt), else retried after the
                if self._give_back(job):  # lease (an attempt)
                    return
                self.backend.fail(job, self.name, "fence: the worker stopped while the other "
                                  "copy's claim was held", claim.lease_until)
                return
            claim = waited
        if claim.finished:
            gate.duplicate(job, claim)
            with self._lock:
                self.report.duplicates += 1
            return
        if claim.takeovers:
            log.warning("job %s: took over the claim of a member whose lease expired", job.id,
                        extra={"job_id": job.id, "event": "takeover"})
        if claim.attempts > 0:
            # One budget across both copies: the claim counts this enqueue's attempts on
            # either side (this one included); the run and its record go by that count, so
            # the last one's failure is final wherever it runs.
            job = job.replace(attempts=max(job.attempts, claim.attempts - 1))
        self._execute(job, index)

    def _accept(self, record: JobRecord) -> str | None:
        reason = record.problem
        if reason is None and record.task not in self.registry:
            reason = f"unknown task {record.task!r}" + self.registry.suggestion(record.task)
        return self._skip(record, reason)

    def _dry_accept(self, record: JobRecord) -> str | None:
        """A dry run takes every copy of a source job that has another copy (an undecodable
        one, or one of an unknown task, is recorded as a mismatch), and leaves in place the
        only copy of a job: removing it would lose it (see :meth:`PhaseGate.foreign`). Logged
        at INFO: after a rollback into shadow, these are the jobs the move back moves."""
        assert self.gate is not None
        return self._skip(record, self.gate.foreign(record), logging.INFO, "left_in_place")

    def _skip(self, record: JobRecord, reason: str | None, level: int = logging.ERROR,
              event: str = "quarantined") -> str | None:
        if reason is None:
            return None
        with self._lock:
            first = record.id not in self.report.skipped
            self.report.skipped[record.id] = reason
        if first:
            log.log(level, "skipped job %s on %s: %s (left in place)", record.id,
                    self.backend.name, reason,
                    extra={"job_id": record.id, "task": record.task,
                           "backend": self.backend.name, "event": event})
        return reason

    def _execute(self, job: JobRecord, index: int) -> None:
        self._local.ran = True  # (the watchdog's thread never gets here)
        task = self.registry.resolve(job.task, job_id=job.id)
        log.info("started job %s (%s) attempt %d/%d", job.id, task.name, job.attempts + 1,
                 job.max_attempts, extra={"job_id": job.id, "task": task.name,
                                          "backend": self.backend.name, "event": "started"})
        limit = effective_timeout(job, task, self.timeout)
        if self._slots:
            outcome = self._slots[index].run(task.name, job.args, job.kwargs, limit)
        else:
            me = threading.current_thread().name
            if limit is not None:
                with self._lock:
                    self._deadlines[me] = (job, time.monotonic() + limit, limit)
            outcome = call_task(task.func, job.args, job.kwargs)
            with self._lock:
                if me in self._abandoned:
                    return  # the watchdog failed this job already; the worker is stopping
                self._deadlines.pop(me, None)
        self._record(job, task, outcome)

    def _unjoined(self, gate: PhaseGate, job: JobRecord, final: bool, state: ClaimState,
                  exc: CutoverError, record: Callable[[], None], delay: float = 0.0) -> None:
        """The outcome's transaction, with the fence's finish or release in it, lost its
        connection (rolled back): the claim is settled on the plane's own connection (retried
        while the lease is kept: PhaseGate.finish; idempotent, should the transaction have
        committed after all), then the outcome is recorded alone, tried again while the
        backend cannot be reached (bounded)."""
        log.warning("job %s: recording its outcome with its claim failed (%s); settling the "
                    "claim, then recording it alone", job.id, exc,
                    extra={"job_id": job.id, "event": "control_retry"})
        if final:
            gate.finish(job, state)
        else:
            gate.release(job, delay=delay)
        self._recording(job, record, recorded_first=True)

    def _recording(self, job: JobRecord, record: Callable[[], None], *,
                   recorded_first: bool = False) -> None:
        """Record an outcome in the backend, tried again (bounded: RETRY_WAITS) while the
        backend cannot be reached. A lost connection leaves the outcome unknown (a pipelined
        transaction's COMMIT may have run before the connection went): before each try again
        (and before the first, ``recorded_first``) the job is read, and one no longer started
        was recorded already."""
        waits = iter(RETRY_WAITS)
        check = recorded_first
        while True:
            try:
                if check and self._recorded(job):
                    return
                record()
                return
            except BackendUnavailableError as exc:
                wait = next(waits, None)
                if wait is None:
                    raise
                log.warning("job %s: recording its outcome failed (%s); trying again in "
                            "%.2fs", job.id, exc, wait, extra={"job_id": job.id})
                time.sleep(wait)
                check = True

    def _recorded(self, job: JobRecord) -> bool:
        """Whether ``job``'s outcome is recorded: it is no longer started (or gone), or it
        counts more attempts than when this worker took it (a retry recorded, and started
        again by another worker since)."""
        current = self.backend.get(job.id)
        return (current is None or current.state is not JobState.STARTED
                or current.attempts > job.attempts)

    def _record(self, job: JobRecord, task: Task, outcome: Outcome) -> None:
        """Store the outcome: complete, schedule the retry, or fail for good."""
        extra = {"job_id": job.id, "task": task.name, "backend": self.backend.name}
        gate = self.gate if self.gate is not None and self.gate.held(job.id) else None
        attempts_made = job.attempts + 1
        final = outcome.ok or attempts_made >= job.max_attempts
        delay = 0.0 if final else job.retry_delay(attempts_made)
        settle: TxHook | None = None
        checks: list[Callable[[], None]] = []  # read once the outcome committed
        if gate is not None:
            # The claim first: a crash before the backend's record leaves a finished claim,
            # so the other copy (or this one, recovered) is a duplicate, not a second run. Or,
            # where the backend's database holds the plane, in the record's own transaction.
            # A retry releases the claim until its retry time: neither copy runs before it.
            state = ClaimState.DONE if outcome.ok else ClaimState.FAILED
            if gate.joined is None:  # the plane's own statements, before the record
                if final:
                    try:
                        gate.finish(job, state)
                    except BackendUnavailableError as exc:  # after its patience: the outcome
                        self._local.unfinished = exc  # is recorded all the same, then the
                        # worker stops (_one)
                else:
                    gate.release(job, delay=delay)
            elif final:  # in the record's transaction; its answer read after the commit
                joined_gate = gate

                def finish_in(conn: Any) -> None:
                    checks.append(joined_gate.finish_in(job, state, conn))
                settle = finish_in
            else:
                settle = functools.partial(gate.release, job, delay=delay)
        if outcome.ok:
            if settle is not None and gate is not None and gate.joined is not None:
                try:
                    gate.joined.complete_tx(job, self.name, outcome.result, settle)
                    for check in checks:
                        check()
                except BackendUnavailableError as exc:
                    self._unjoined(gate, job, final, state, exc, functools.partial(
                        self.backend.complete, job, self.name, outcome.result))
            else:
                self._recording(job, functools.partial(self.backend.complete, job, self.name,
                                                       outcome.result))
            with self._lock:
                self.report.succeeded += 1
            self.metrics.outcome(self.backend.name, "succeeded")
            log.info("job %s (%s) succeeded", job.id, task.name,
                     extra={**extra, "event": "succeeded"})
            return
        error = outcome.traceback or outcome.error or "failed"
        extra["traceback"] = error
        retry_at = None
        if not final:
            retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
        if settle is not None and gate is not None and gate.joined is not None:
            try:
                gate.joined.fail_tx(job, self.name, error, retry_at, settle)
                for check in checks:
                    check()
            except BackendUnavailableError as exc:
                self._unjoined(gate, job, final, state, exc, functools.partial(
                    self.backend.fail, job, self.name, error, retry_at), delay)
        else:
            self._recording(job, functools.partial(self.backend.fail, job, self.name, error,
                                                   retry_at))
        if retry_at is not None:
            self.metrics.outcome(self.backend.name, "retried")
            with self._lock:
                self.report.retried += 1
                due = time.monotonic() + delay + 0.01
                if self._next_retry is None or due < self._next_retry:
                    self._next_retry = due
            log.warning("job %s (%s) failed: %s; retry %d of %d in %.1fs", job.id, task.name,
                        outcome.error, attempts_made, job.max_attempts - 1, delay,
                        extra={**extra, "event": "retried"})
        else:
            with self._lock:
                self.report.failed += 1
            self.metrics.outcome(self.backend.name, "failed")
            log.error("job %s (%s) failed for good after %d attempt(s): %s", job.id,
                      task.name, attempts_made, outcome.error,
                      extra={**extra, "event": "failed"})


