"""The execution fence and the phase, as a cutover worker sees them.

A :class:`PhaseGate` joins one worker to the control plane: it registers the worker in the fleet
(side, backend, mode), heartbeats it with its metrics snapshot, acknowledges each epoch, reads the
phase through one :class:`~cutover.control.PhaseWatcher` and says, between jobs, what the worker
does (:func:`cutover.phases.mode`):

- ``EXECUTE`` / ``FENCED``: run the job. Once a staged cut-over has started (any phase but ``off``
  at epoch 0) the run goes through the fence, because a job may have a copy on the other side: the
  job's cutover id is claimed in ``claims`` under a lease, which a heartbeat extends while the job
  runs. The first claimant runs it; a claim already finished makes this copy a duplicate (removed
  without running, counted); a claim held under a valid lease makes this copy wait (its thread
  polls the claim, the backend copy stays started under this worker's heartbeat, no attempt is
  consumed) until the claim finishes or its lease expires (then this copy takes over). The claim
  is finished (done or failed) *before* the outcome is written to the backend, so a crash in
  between leaves a claim that marks the other copy a duplicate, not a second run. A retry
  releases the claim until its retry time (below). When the control plane lives in the
  backend's own database (:attr:`PhaseGate.joined`: the Procrastinate side with the plane
  beside it) the claim is made in the transaction that starts the job and finished or
  released in the one that records its outcome: no moment between them at all, and one commit
  (one fsync) for each pair instead of two.
- ``DRY`` (the target in ``shadow``): decode, resolve the task, compare the copy with the source
  copy (its ledger row's content, else the source backend's copy by the same cutover id), record
  the result (``shadow_results``) and remove the target copy without running it. A removal is no
  departure (neither backend's records say the job *ran*), so verify and drain read the target as
  never having had the job, which is the truth: it ran on the source. Only a copy that is not
  the only one is taken (:meth:`PhaseGate.foreign`): a target copy with no source copy and no
  finished claim (a job written in ``rampdown`` or ``complete`` before a rollback into
  ``shadow``, or by a producer that had not yet seen it) is left in place, whatever the order
  of the rollback's move back and the dry run: the move back moves it, or the target runs it
  once it runs again (the worker forgets the copies it left once its mode is no longer dry).
- ``IDLE``: claim nothing (logged once per change); ``--burst`` exits 0.

**A claim belongs to one enqueue of a job, not to its id** (migration 0004): ``claims`` has a
row per enqueue of a cutover id (``generation`` 1, 2, ...; all of an id's rows are read by
``cutover_id``). A copy's enqueue is told by what the adapters really store:

- its *stamp*, ``JobRecord.created_at``: the Router writes one record to both backends, so both
  copies of a dual write carry the same (RQ's ``created_at``, ``cutover_jobs.created_at``), and
  a move carries it; a plain RQ ``Queue.enqueue(job_id=...)`` that reuses an id stamps its own
  (RQ's ``Job.create``): a new stamp is a new enqueue, which runs;
- on the side whose copy finished the claim, what the backend's own tools leave: RQ's requeue
  (``Job.requeue``, ``rq requeue``) keeps the hash and stamp but clears ``started_at`` and
  ``ended_at`` (a copy with no run: ``updated_at`` None) while keeping the count the worker
  recorded (``cutover_attempts`` >= the claim's); procrastinate's ``retry_job_by_id`` keeps
  the row and adds an attempt to the one the run's record added (two more than the copy had
  when it claimed). Either starts a new generation: it runs, with its own claim.
- anything else meeting a finished claim of its enqueue is that enqueue's copy: the other
  side's twin (it never ran the last attempt), or this side's copy recovered after a crash
  between the claim's finish and the backend's record (recovery records the attempt: ended_at
  set, one attempt more, not two): a duplicate, as before.

**One budget across both copies, the backoff honoured.** The claim row counts the enqueue's
attempts on either side (``attempts``, the running one included); the copy that wins the claim
runs and records its attempt by that count (``JobRecord.attempts`` replaced), so
``JobRecord.max_attempts`` bounds the runs of both copies together and the last attempt's
failure is final wherever it runs (visible there with its error; the other copy is then a
duplicate). A retry *releases* the claim until its retry time (``JobRecord.retry_delay``, the
rule the worker applies on every backend; the time is the database's ``now()`` plus the
delay): neither copy claims it before, so the other copy waits (its thread polls, as for a
held lease, no attempt consumed) and either claims it after, counting on. A takeover after a
lease expired does not charge the dead run to the other copy (the backend's recovery of the dead
copy charges it there; the count goes by the greater).

``off`` at epoch 0 (no staged cut-over ever started: drains only) keeps today's behaviour on both
sides, fence-free. After a rollback to ``off`` (epoch > 0) the target is idle: its copies of jobs
the source runs must not run there. The source still runs through the fence then: a copy written
in ``shadow`` or ``live`` may still wait there whose other copy ran on the target (its claim
finished) or still runs there, started before the rollback; unfenced it would run a second time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cutover import codec, fleet_metrics, marker
from cutover.backend import QueueBackend, TransactionalWork
from cutover.control import Claim, ControlPlane, MemberKind, PhaseWatcher
from cutover.control.claims import LEASE, ClaimState
from cutover.control.fleet import HEARTBEAT
from cutover.control.phase import PhaseState
from cutover.control.watcher import REFRESH, STALE_AFTER, check_bounds
from cutover.errors import (
    BackendUnavailableError,
    ConfigurationError,
    CutoverError,
    PreconditionError,
)
from cutover.metrics import METRICS, Metrics
from cutover.phases import Mode, Phase, Side, mode
from cutover.record import JobRecord
from cutover.registry import TaskRegistry

log = logging.getLogger("cutover.fence")

#: A dry run that finds no other copy of a job asks the source again after this long (seconds):
#: a Router in shadow writes the target first and the source an instant later.
SOURCE_RECHECK = 0.05
#: How long (seconds) a worker keeps trying to finish the claim of a job it ran while the control
#: plane cannot be reached (the lease is extended meanwhile whenever the plane answers), before
#: it gives up and stops with the job's outcome unrecorded (see :meth:`PhaseGate.finish`).
FINISH_PATIENCE = 300.0

#: Content fields a run of the source copy changes (attempts made, the next retry's time): a
#: dry run compares them only while the source copy has not been attempted.
RUN_FIELDS = ("attempts", "run_at")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A dry run's result: matched, or why not."""

    matched: bool
    detail: str = ""


def compare(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Content fields that differ between a target copy and the source copy (encoded content
    dicts), leaving out what a run of the source copy changed."""
    skip: set[str] = set()
    if int(theirs.get("attempts") or 0) > int(mine.get("attempts") or 0):
        skip.update(RUN_FIELDS)
    return {k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs))
            if k not in skip and codec.canonical(mine.get(k)) != codec.canonical(theirs.get(k))}


class PhaseGate:
    """One worker's view of the staged cut-over: its mode, its fleet membership, its claims."""

    def __init__(self, control: ControlPlane, backend: QueueBackend, side: Side, *,
                 source: QueueBackend | None = None, lease: float = LEASE,
                 heartbeat: float = HEARTBEAT, refresh: float | None = None,
                 metrics: Metrics | None = None, stale_after: float = STALE_AFTER) -> None:
        self.control = control
        self.backend = backend
        self.side = side
        self.source = source
        self.lease = lease
        check_bounds(REFRESH if refresh is None else refresh, stale_after)
        self.stale_after = stale_after
        self.heartbeat_interval = min(heartbeat, lease / 3)
        self.metrics = metrics
        self.member = control.register(MemberKind.WORKER, side=side, backend=backend.name)
        kwargs: dict[str, Any] = {} if refresh is None else {"refresh": refresh}
        self.watcher = PhaseWatcher(control, **kwargs).start()
        self._lock = threading.Lock()
        #: The claims this worker holds: cutover id -> the enqueue's generation (None: not
        #: known here any more, after a joined finish or release that failed; the plane then
        #: settles the one claim this member holds of the id).
        self._held: dict[str, int | None] = {}
        self._finishing: set[str] = set()  # held, their finish under way (no "lost" alarm)
        #: How long :meth:`finish` keeps trying while the plane is unreachable.
        self.finish_patience = FINISH_PATIENCE
        self._stop = threading.Event()
        self._acked = -1
        self._seen: dict[str, int] = {}
        self._logged: tuple[Phase, Mode] | None = None
        try:
            self.beat()
            #: The backend, when its database holds this control plane: the fence's claim and
            #: finish then join the job's own start and outcome transactions (one commit each,
            #: and no moment between them); None: they are the plane's own statements.
            self.joined: TransactionalWork | None = self._joins(backend)
        except BaseException:
            self.watcher.close()
            raise
        self._thread = threading.Thread(target=self._run, name="cutover-fence-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _joins(self, backend: QueueBackend) -> TransactionalWork | None:
        """``backend`` if its connections reach this control plane's database: they see this
        member's own fleet row (a random uuid; a database without the schema fails)."""
        if not isinstance(backend, TransactionalWork):
            return None
        found: list[bool] = []
        try:
            backend.run_tx(lambda conn: found.append(self.control.member_here(self.member,
                                                                              conn)))
        except CutoverError:
            return None
        return backend if found and found[0] else None

    # -- the mode ----------------------------------------------------------------------------
    def state(self) -> PhaseState:
        return self.watcher.state()

    def mode(self) -> tuple[Mode, bool]:
        """(mode, fenced): what the worker does with the next job, and whether a run goes
        through the fence. Read between jobs, never during one.

        Refused (:class:`PhaseUnknownError`, which stops the worker) when the phase could not be
        read for ``stale_after`` seconds: a worker that ran on by an old phase could run a job
        without the fence while the other side runs its copy."""
        state = self.watcher.fresh(self.stale_after, f"the {self.side} worker stops rather "
                                   "than run jobs by an old phase; start it again once the "
                                   "control plane answers")
        if state.phase is Phase.OFF and state.epoch == 0:
            now, fenced = Mode.EXECUTE, False  # no staged cut-over ever started: as before
        else:
            # Once a cut-over started, every run is fenced, off included (a rollback to off
            # leaves source copies whose target copy ran: see the module's doc).
            now = mode(state.phase, self.side)
            fenced = now in (Mode.FENCED, Mode.EXECUTE)
        if self._logged != (state.phase, now):
            if self._logged is not None and self._logged[1] is Mode.DRY:
                # The copies the dry run left in place (the only ones: see foreign) are the
                # backend's skipped jobs: they run in this mode.
                forget: Callable[[], None] | None = getattr(self.backend, "forget_skipped",
                                                            None)
                if forget is not None:
                    forget()
            self._logged = (state.phase, now)
            how = {Mode.IDLE: "claims nothing (this side is not in service in this phase)",
                   Mode.DRY: "dry-runs jobs: compares them with the source copy, runs nothing",
                   Mode.FENCED: "runs jobs through the fence",
                   Mode.EXECUTE: "runs jobs" + (" through the fence" if fenced else "")}[now]
            log.info("phase %s (epoch %d): the %s worker on %s %s", state.phase, state.epoch,
                     self.side, self.backend.name, how,
                     extra={"event": "mode", "backend": self.backend.name})
        self._ack(state.epoch)
        return now, fenced

    def _ack(self, epoch: int) -> None:
        # Each worker thread asks for its mode between jobs; the worker acknowledges an epoch
        # once every thread has asked under it, i.e. no job taken under an older epoch still
        # runs here.
        with self._lock:
            self._seen[threading.current_thread().name] = epoch
            settled = min(self._seen.values())
        if settled != self._acked:
            with contextlib.suppress(CutoverError):
                self.control.ack_epoch(self.member, settled)
                self._acked = settled

    # -- the fence ---------------------------------------------------------------------------
    def claim(self, job: JobRecord, conn: Any = None) -> Claim:
        """Try to claim ``job`` for this worker: the claim of its enqueue (see the module's
        doc); a won claim is kept alive by the heartbeat. ``conn``: the transaction that
        starts the job (:attr:`joined`), else the plane's."""
        claim = self.control.claim(job.id, self.side, self.member, self.lease, conn=conn,
                                   stamp=job.created_at, attempts=job.attempts,
                                   fresh=job.updated_at is None)
        if claim.won:
            with self._lock:
                self._held[job.id] = claim.generation
        return claim

    def wait(self, job: JobRecord, claim: Claim, stop: threading.Event) -> Claim | None:
        """Wait while another member holds ``job``'s claim under a valid lease: returns the
        claim once it is won (the lease expired: take over) or finished (this copy is a
        duplicate), or None when the worker stops first."""
        while not claim.won and not claim.finished:
            left = (claim.lease_until.timestamp() - time.time())
            if stop.wait(min(max(left, 0.05), 1.0)):
                return None
            claim = self.claim(job)
        return claim

    def finish(self, job: JobRecord, state: ClaimState, conn: Any = None) -> None:
        """The job ran to its end here (before the backend records it, or in the transaction
        that records it, ``conn``: see the module's docstring).

        On the plane's own connection a lost connection is survived: the plane retries the
        statement (cutover.control.plane), and while it still cannot be reached this keeps
        trying for :attr:`finish_patience` seconds with the claim kept held, so the heartbeat
        extends its lease whenever the plane answers and the other copy cannot take it over
        meanwhile (it cannot claim either while the plane is down; a worker cut off alone
        loses it when the lease runs out, as a killed one does). Only then
        :class:`BackendUnavailableError` (the worker records the outcome all the same, the
        truth on its side, and stops; the claim's lease lapses once it is gone)."""
        if conn is not None:
            with self._lock:
                generation = self._held.pop(job.id, None)
            if not self.control.finish(job.id, self.member, state, conn=conn,
                                       generation=generation):
                self._lost(job)
            return
        with self._lock:
            # Held (again, after a joined finish that failed: the heartbeat extends the lease
            # while this retries).
            generation = self._held.setdefault(job.id, None)
            self._finishing.add(job.id)
        try:
            ok = self._patiently(f"finishing the claim of job {job.id}", lambda: (
                self.control.finish(job.id, self.member, state, generation=generation)))
        finally:
            with self._lock:
                self._finishing.discard(job.id)
        with self._lock:
            self._held.pop(job.id, None)
        if not ok:
            self._lost(job)

    def _patiently(self, doing: str, verb: Callable[[], bool]) -> bool:
        """``verb()``, tried again while the plane is unreachable, for up to
        :attr:`finish_patience` seconds (waits of up to 5 s between tries)."""
        deadline = time.monotonic() + self.finish_patience
        wait = 0.5
        while True:
            try:
                return verb()
            except BackendUnavailableError as exc:
                if time.monotonic() + wait > deadline:
                    raise
                log.error("%s: the control plane is unreachable (%s); trying again in %.1fs "
                          "(the claim stays held, its lease extended while the plane answers)",
                          doing, exc, wait, extra={"event": "control_unreachable"})
                time.sleep(wait)
                wait = min(wait * 2, 5.0)

    def finish_in(self, job: JobRecord, state: ClaimState, conn: Any) -> Callable[[], None]:
        """:meth:`finish` queued in the pipelined transaction that records the job's outcome
        (:attr:`joined`); call the returned function once it committed (it logs a claim that
        had been taken over, as :meth:`finish` does)."""
        with self._lock:
            generation = self._held.pop(job.id, None)
        answer = self.control.finish_later(job.id, self.member, state, conn,
                                           generation=generation)

        def check() -> None:
            if not answer():
                self._lost(job)
        return check

    def _lost(self, job: JobRecord) -> None:
        log.error("job %s finished on the %s, but its claim had been taken over (its lease "
                  "expired while it ran: a heartbeat was late); the other copy may run too",
                  job.id, self.side, extra={"job_id": job.id, "event": "claim_lost"})

    def release(self, job: JobRecord, conn: Any = None, *, delay: float = 0.0) -> None:
        """A retry in ``delay`` seconds (``JobRecord.retry_delay``): give the claim up until
        then, so that the next attempt, on either side, claims it at its retry time and not
        before, counting on from this one (``conn``: in the transaction that records the
        retry). On the plane's own connection, a plane still unreachable after its retries is
        logged, not raised: the lease, no longer extended, ends on its own, and the retry
        claims then (later, never twice)."""
        with self._lock:
            generation = self._held.pop(job.id, None)
        if conn is not None:
            self.control.release(job.id, self.member, conn=conn, generation=generation,
                                 delay=delay)
            return
        try:
            self.control.release(job.id, self.member, generation=generation, delay=delay)
        except BackendUnavailableError as exc:
            log.warning("job %s: could not release its claim (%s); its retry claims it once "
                        "the lease ends", job.id, exc, extra={"job_id": job.id,
                                                             "event": "release_late"})

    def held(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._held

    def finished_claim(self, job_id: str, job: JobRecord | None = None) -> Claim | None:
        """``job_id``'s claim if it ended (a copy ran to its end, here or on the other side):
        the claim of ``job``'s enqueue (its stamp) when given, else the id's newest."""
        claim = (self.control.claim_of(job_id) if job is None else
                 self.control.claim_of(job_id, job.created_at, any_stamp=False))
        return claim if claim is not None and claim.finished else None

    def duplicate(self, job: JobRecord, claim: Claim) -> None:
        """The other copy ran (``claim`` finished): remove this one without running it."""
        self.control.record_removal(job.id, self.side, "duplicate")  # verify's evidence
        self.backend.remove([job.id])
        if self.metrics is not None:
            self.metrics.duplicate_skipped(self.backend.name)
        log.info("job %s on %s is a duplicate: it %s on the %s; removed without running",
                 job.id, self.backend.name, "ran" if claim.state is ClaimState.DONE else "failed",
                 claim.side, extra={"job_id": job.id, "backend": self.backend.name,
                                    "event": "duplicate_skipped"})

    # -- shadow --------------------------------------------------------------------------------
    def foreign(self, job: JobRecord) -> str | None:
        """Why a dry run must leave ``job`` in place, or None.

        A dry run removes a target copy, so it may take only a copy that is not the only one:
        one whose source copy exists (any state: the source runs it, or ran it) or whose claim
        finished (a copy ran, here or on the other side). Any other copy is left in place,
        whatever the ledger says: a job the Router wrote to the target alone (in ``rampdown``
        or ``complete``, or by a producer that had not yet seen a rollback into ``shadow``, or
        that died between its two writes), waiting for the move back of a rollback or for the
        target to run again; or a job with no ledger row that plain procrastinate code
        deferred. The source is asked twice, :data:`SOURCE_RECHECK` apart: a Router in
        ``shadow`` writes the target first, and its source write may land just after."""
        if self._has_other_copy(job):
            return None
        time.sleep(SOURCE_RECHECK)
        if self._has_other_copy(job):
            return None
        if self.source is None:
            return ("no source backend to compare with (start the target's worker with "
                    "--source): a dry run cannot tell whether this copy is the only one")
        if self.control.content_of(job.id) is None:
            return ("no copy of a source job (no ledger row, none on the source): a dry run "
                    "would remove the only copy")
        return ("the only copy (none on the source, no finished claim): left in place for "
                "the move back of a rollback, or for the target's run in a later phase")

    def _has_other_copy(self, job: JobRecord) -> bool:
        if self.source is not None and self.source.get(job.id) is not None:
            return True
        # The claim of this copy's own enqueue (its stamp): a finished claim of an earlier job
        # under the same id says nothing about this one.
        return self.finished_claim(job.id, job) is not None

    def dry_run(self, job: JobRecord, registry: TaskRegistry) -> Verdict:
        """Decode, resolve, compare with the source copy, record; remove the target copy."""
        verdict = self._judge(job, registry)
        self.control.record_shadow(job.id, verdict.matched, verdict.detail)
        if self.metrics is not None:
            self.metrics.shadow_result(self.backend.name, verdict.matched)
        self.control.record_removal(job.id, self.side, "dry_run")  # verify's evidence
        self.backend.remove([job.id])
        log.log(logging.INFO if verdict.matched else logging.WARNING,
                "shadow: job %s %s", job.id,
                "matched its source copy" if verdict.matched else f"differs: {verdict.detail}",
                extra={"job_id": job.id, "backend": self.backend.name, "event": "shadowed"})
        return verdict

    def _judge(self, job: JobRecord, registry: TaskRegistry) -> Verdict:
        if job.problem:
            return Verdict(False, f"undecodable: {job.problem}")
        if job.task not in registry:
            return Verdict(False, f"unknown task {job.task!r}")
        try:
            mine = json.loads(job.content_json())
        except CutoverError as exc:
            return Verdict(False, f"undecodable: {exc}")
        # Against both references there are: the ledger row (what the producer wrote) and the
        # source copy (what the source's workers run), when it is still there.
        references: list[tuple[str, dict[str, Any]]] = []
        found = self.control.content_of(job.id)
        if found is not None and found[0] != job.digest():
            references.append(("ledger", found[1]))
        copy = self.source.get(job.id) if self.source is not None else None
        if copy is not None and copy.problem:
            return Verdict(False, f"the source copy is undecodable: {copy.problem}")
        if copy is not None:
            references.append(("source", json.loads(copy.content_json())))
        elif found is None:
            return Verdict(False, "no source copy to compare with (no ledger row, and none on "
                                  "the source)")
        problems = []
        for where, theirs in references:
            diffs = compare(mine, theirs)
            problems += [f"{k}: target {codec.canonical(a)} != {where} {codec.canonical(b)}"
                         for k, (a, b) in diffs.items()]
        if not problems:
            return Verdict(True)
        return Verdict(False, ("digest differs: " + "; ".join(problems))[:2000])

    # -- membership ----------------------------------------------------------------------------
    def beat(self) -> None:
        """Heartbeat the membership now (mode, metrics, native ids); register again if the
        registration was pruned."""
        ids: Callable[[], list[str]] | None = getattr(self.backend, "worker_ids", None)
        mode_now = self._logged[1].value if self._logged else None
        if not fleet_metrics.publish(self.control, self.member, self.metrics or METRICS,
                                     mode=mode_now,
                                     native_ids=ids() if ids else None):
            self.member = self.control.register(MemberKind.WORKER, side=self.side,
                                                backend=self.backend.name, member=self.member)

    def _run(self) -> None:
        """Extend the leases of running jobs (every lease/3) and heartbeat the membership."""
        try:
            self._beats()
        finally:
            self.control.close_thread()  # this thread's connection ends with it

    def _beats(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.lease / 3):
            with self._lock:
                held = sorted(self._held)
            for job_id in held:
                try:
                    if not self.control.extend(job_id, self.member, self.lease):
                        with self._lock:
                            ours = job_id in self._held and job_id not in self._finishing
                        if ours:
                            log.error("lost the claim of running job %s (taken over)", job_id)
                except CutoverError as exc:
                    log.error("could not extend the claim of job %s: %s", job_id, exc)
            if time.monotonic() - last >= self.heartbeat_interval:
                last = time.monotonic()
                try:
                    self.beat()
                except CutoverError as exc:
                    log.error("fleet heartbeat failed: %s", exc)

    def close(self) -> None:
        """Leave the fleet (running claims are finished or released by the worker first), stop
        the heartbeat thread and the watcher (their connections close with them). The control
        plane stays open: it is the caller's. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=self.lease)
        self.watcher.close()
        with contextlib.suppress(CutoverError):
            self.control.deregister(self.member)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """What a :class:`~cutover.worker.Worker` needs to build its own :class:`PhaseGate`: the
    worker opens the gate when ``run()`` starts and closes it when ``run()`` returns (the
    control plane stays the caller's, as with a gate handed in)."""

    control: ControlPlane
    side: Side
    source: QueueBackend | None = None
    lease: float = LEASE
    heartbeat: float = HEARTBEAT
    refresh: float | None = None
    stale_after: float = STALE_AFTER

    def open(self, backend: QueueBackend, metrics: Metrics | None = None) -> PhaseGate:
        """The gate; refused (exit 2) when ``backend``'s store carries a cut-over marker that
        names another control plane (cutover.marker.check_control)."""
        marker.check_control(backend, self.control, "refusing to start")
        return PhaseGate(self.control, backend, self.side, source=self.source,
                         lease=self.lease, heartbeat=self.heartbeat, refresh=self.refresh,
                         metrics=metrics, stale_after=self.stale_after)


def side_of(backend: QueueBackend, state: PhaseState, source_url: str | None,
            target_url: str | None, url: str) -> Side:
    """Which side of the pair ``backend`` is: by the phase's pair (store identities) when one is
    fixed, else by the URLs given; refuse (exit 2) a backend that is neither."""
    if state.pair is not None:
        key = backend.identity().key
        if key == state.pair.source_key:
            return Side.SOURCE
        if key == state.pair.target_key:
            return Side.TARGET
        raise ConfigurationError(
            f"the worker's backend {backend.url} is neither side of the cut-over "
            f"({state.pair.source_url} -> {state.pair.target_url})")
    if url == source_url:
        return Side.SOURCE
    if url == target_url:
        return Side.TARGET
    raise ConfigurationError(f"cannot tell which side of the cut-over {backend.url} is: give "
                             "--source and --target")


#: A finished claim is kept at least this long (seconds): a Router's dual write whose target
#: copy ran before its source write landed must still find it (see :func:`prune_claims`).
PRUNE_GRACE = 24 * 3600.0


@dataclasses.dataclass
class PruneReport:
    """What :func:`prune_claims` did: claims deleted, and kept because a copy is still live."""

    deleted: int = 0
    kept: list[str] = dataclasses.field(default_factory=list)


def prune_claims(control: ControlPlane, source: QueueBackend, target: QueueBackend, *,
                 older_than: float = PRUNE_GRACE, limit: int = 10_000) -> PruneReport:
    """Delete finished claims the fence no longer needs, at most ``limit`` in one call.

    A finished claim is what turns the other copy of a job into a duplicate (and a recovered
    copy of a job whose outcome the backend never recorded): it is needed while any copy of
    the job may still reach a fenced worker. So a claim goes only when it finished more than
    ``older_than`` seconds ago (a Router's source write can still be on its way after its
    target copy ran: hence a long grace) and neither backend holds a live copy of the job
    (waiting, scheduled, started, or held by a drain), checked while the pair's drain locks
    (both directions) are held, so no drain moves a copy between the two reads. Claims that
    are still claimed are never touched. Verify reads finished claims as evidence that a job
    ran: prune after the walk's final verify (a job whose claim is gone and whose copies
    retention removed leans on the backends' departure records alone, and without one is
    reported, never assumed fine). Refused (False lock) while a drain runs: try again later."""
    if older_than < 0 or limit < 1:
        raise ValueError("older_than must be >= 0 and limit >= 1")
    skey, tkey = source.identity().key, target.identity().key
    report = PruneReport()
    locked: list[tuple[str, str]] = []
    try:
        for pair in ((skey, tkey), (tkey, skey)):
            if not control.lock_pair(*pair):
                raise PreconditionError("a drain is running between these backends: prune the "
                                        "claims once it has finished")
            locked.append(pair)
        candidates = control.finished_before(older_than, limit)
        kept = {job_id for job_id in candidates for backend in (source, target)
                if (copy := backend.get(job_id)) is not None and copy.state.live}
        report.kept = sorted(kept)
        report.deleted = control.prune_finished([i for i in candidates if i not in kept],
                                                older_than)
    finally:
        for pair in locked:
            control.unlock_pair(*pair)
    return report
