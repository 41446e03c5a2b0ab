"""Audit: what a drain would do with every job of the source, before anything moves."""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from cutover.backend import Capabilities, QueueBackend
from cutover.dependencies import DependencyView
from cutover.limits import ledger_limits
from cutover.misreads import plain_procrastinate_misreads
from cutover.record import JobRecord, JobState
from cutover.registry import TaskRegistry

#: Why a target cannot hold a record (empty when it can): ``QueueBackend.cannot_hold``.
Limits = Callable[[JobRecord], list[str]]


class JobClass(enum.StrEnum):
    """What happens to a job in a drain."""

    MOVABLE = "movable"            # moves as it is
    LOSSY = "lossy"                # moves, but a named native feature does not
    IN_PLACE = "in_place"          # must finish where it is (running, waiting on dependencies)
    QUARANTINED = "quarantined"    # unsafe or undecodable payload
    UNKNOWN_TASK = "unknown_task"  # not in the registry
    UNSUPPORTED = "unsupported"    # arguments the codec cannot carry
    FAILED = "failed"              # moves only with --include-failed
    HISTORY = "history"            # finished or canceled: never moved, not a problem

    @property
    def moves(self) -> bool:
        return self in (JobClass.MOVABLE, JobClass.LOSSY)


#: Classes that, left behind, make `cutover audit` and `cutover drain` exit 3.
LEFT_BEHIND = frozenset({JobClass.IN_PLACE, JobClass.QUARANTINED, JobClass.UNKNOWN_TASK,
                         JobClass.UNSUPPORTED, JobClass.FAILED})


@dataclasses.dataclass(frozen=True)
class Verdict:
    job_class: JobClass
    reason: str = ""
    losses: tuple[str, ...] = ()


def classify(record: JobRecord, registry: TaskRegistry, target: Capabilities, *,
             include_failed: bool = False, owner: str | None = None,
             limits: Limits | None = None,
             dependencies: DependencyView | None = None) -> Verdict:
    """The class of one job, with the reason a person needs. ``limits``: what the target
    (and the ledger) cannot hold; see :class:`Classifier`, which audit, ``drain --dry-run`` and
    the drain all use. ``dependencies``: the source's dependency facts (cutover.dependencies);
    without them a deferred job stays in place."""
    if record.problem:
        return Verdict(JobClass.QUARANTINED, record.problem)
    if record.state in (JobState.FINISHED, JobState.CANCELED):
        return Verdict(JobClass.HISTORY, record.state.value)
    if record.state is JobState.STARTED:
        return Verdict(JobClass.IN_PLACE, "running")
    if dependencies is not None:
        grouped = _dependency_verdict(record, dependencies)
        if grouped is not None:
            return grouped
    elif record.state is JobState.DEFERRED:
        return Verdict(JobClass.IN_PLACE, "waiting on a dependency that is not done")
    if record.state is JobState.HELD and owner is not None and record.holder != owner:
        return Verdict(JobClass.IN_PLACE, f"held by {record.holder}")
    if record.location == "orphan":
        # RQ would never run it; moving it would run it after all. The drain (which walks
        # RQ's lists) does not see it: say so here, where the operator decides.
        return Verdict(JobClass.IN_PLACE, f"orphaned: {record.state.value} in no RQ list or "
                       "registry of its queue, so no RQ worker will run it; requeue it on RQ "
                       "to have it moved, or delete it")
    if record.location and record.location.startswith(MISPLACED):
        # An RQ worker of that list would still run it, and taking it (by its origin) would
        # not remove it from there: it could run twice. The operator puts it right first.
        where = record.location[len(MISPLACED):]
        return Verdict(JobClass.IN_PLACE, f"misplaced: its queue is {record.queue!r} but it "
                       f"sits in {where}, where a worker of that queue would run it; requeue "
                       "it on its own queue (or delete it) to have it moved")
    if record.task not in registry:
        return Verdict(JobClass.UNKNOWN_TASK, f"task {record.task!r} is not in the registry"
                       + registry.suggestion(record.task))
    problems = record.carry_problems() or (limits(record) if limits is not None else [])
    if problems:
        return Verdict(JobClass.UNSUPPORTED, "; ".join(problems))
    losses = list(record.losses)
    if record.priority and not target.priority:
        losses.append(f"priority {record.priority} (the target has no priority)")
    if record.run_at and not target.scheduling:
        losses.append("run-at (the target cannot schedule)")
    if record.state is JobState.FAILED and not include_failed:
        return Verdict(JobClass.FAILED, record.error or "failed", tuple(losses))
    if losses:
        return Verdict(JobClass.LOSSY, "; ".join(losses), tuple(losses))
    return Verdict(JobClass.MOVABLE)


def _dependency_verdict(record: JobRecord, view: DependencyView) -> Verdict | None:
    """A dependency group resolves where its parents run (see cutover.dependencies): a job
    that deferred jobs wait on stays; a deferred job moves (as queued) once its parents are
    done on either side. None: nothing holds this job back."""
    waiters = view.waiting_on(record.id)
    shown = ", ".join(waiters[:5]) + (f" and {len(waiters) - 5} more" if len(waiters) > 5 else "")
    if record.state is JobState.DEFERRED:
        if not record.depends_on:
            return Verdict(JobClass.IN_PLACE, "deferred, but waits on no job: RQ will never "
                           "queue it; requeue it on RQ to have it moved, or delete it")
        blocking = view.blocking(record)
        if blocking:
            return Verdict(JobClass.IN_PLACE, "waits on " + ", ".join(blocking) + ": it moves "
                           "once they succeed (a failed or canceled parent keeps it deferred "
                           "until that parent is requeued and succeeds, or it is canceled)")
        if waiters:
            return Verdict(JobClass.IN_PLACE, "its dependencies are done and deferred job(s) "
                           f"{shown} wait on it: the drain queues it on the source, where it "
                           "runs and releases them")
        return None
    if waiters and record.state in (JobState.QUEUED, JobState.SCHEDULED, JobState.FAILED):
        return Verdict(JobClass.IN_PLACE, f"deferred job(s) {shown} wait on it: it runs on the "
                       "source, which then queues them (drain again once they are queued)")
    return None


#: ``location`` prefix of a job found somewhere other than where its own queue keeps it.
MISPLACED = "misplaced:"


class Classifier:
    """The one classification of a job that audit, ``drain --dry-run`` and the drain share:
    the same job read by any of them gets the same verdict, by construction. It normalizes the
    record (task name, positional args bound to names), then :func:`classify` with the target's
    capabilities and limits, the ledger's limits and the drain's owner (held jobs of another
    owner stay in place)."""

    def __init__(self, registry: TaskRegistry, target: QueueBackend | None, *,
                 capabilities: Capabilities | None = None, include_failed: bool = False,
                 owner: str | None = None) -> None:
        self.registry = registry
        self.target = target
        self.capabilities = capabilities or (target.capabilities if target is not None
                                             else Capabilities())
        self.include_failed = include_failed
        self.owner = owner
        #: The source's dependency facts, read before each pass (:meth:`read_dependencies`).
        self.dependencies: DependencyView | None = None

    def read_dependencies(self, source: QueueBackend, batch_size: int = 1000) -> DependencyView:
        """Read the source's deferred jobs and where their parents are (source, then target)
        for the jobs classified next. Changes nothing."""
        view = DependencyView.read(source, self.target, batch_size=batch_size)
        # A backend that cannot say what a deferred job waits on: deferred jobs stay in place.
        self.dependencies = view if source.capabilities.dependencies else None
        return view

    def limits(self, record: JobRecord) -> list[str]:
        """The reasons the ledger or the target cannot hold ``record`` (empty: it can)."""
        out = ledger_limits(record)
        if self.target is not None:
            out += self.target.cannot_hold(record)
        return list(dict.fromkeys(out))

    def __call__(self, raw: JobRecord) -> tuple[JobRecord, Verdict]:
        record = self.registry.normalize(raw)
        return record, classify(record, self.registry, self.capabilities,
                                include_failed=self.include_failed, owner=self.owner,
                                limits=self.limits, dependencies=self.dependencies)


@dataclasses.dataclass
class AuditReport:
    """Counts per queue, task and class; the ids and reasons of everything that does not simply
    move (all of them: the JSON report is the full list)."""

    by_class: Counter[str] = dataclasses.field(default_factory=Counter)
    by_state: Counter[str] = dataclasses.field(default_factory=Counter)
    by_queue: dict[str, Counter[str]] = dataclasses.field(default_factory=dict)
    by_task: dict[str, Counter[str]] = dataclasses.field(default_factory=dict)
    orphans: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, list[dict[str, str]]] = dataclasses.field(default_factory=dict)
    #: per task, what a plain procrastinate App (without make_app) would misread in the jobs
    #: that move, with counts: information, never a reason to exit 3
    plain_procrastinate: dict[str, Counter[str]] = dataclasses.field(default_factory=dict)
    total: int = 0
    #: Keep every job's class by id in ``verdicts`` (tests comparing audit, plan and drain).
    every_job: bool = False
    verdicts: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, record: JobRecord, verdict: Verdict) -> None:
        cls = verdict.job_class.value
        self.total += 1
        self.by_class[cls] += 1
        self.by_state[record.state.value] += 1
        self.by_queue.setdefault(record.queue or "?", Counter())[cls] += 1
        self.by_task.setdefault(record.task or "?", Counter())[cls] += 1
        if record.location == "orphan":
            self.orphans.append(record.id)
        if self.every_job:
            self.verdicts[record.id] = cls
        if verdict.job_class.moves:
            misreads = plain_procrastinate_misreads(record)
            if misreads:
                self.plain_procrastinate.setdefault(record.task, Counter()).update(misreads)
        if verdict.job_class not in (JobClass.MOVABLE, JobClass.HISTORY):
            self.details.setdefault(cls, []).append(
                {"id": record.id, "task": record.task, "queue": record.queue,
                 "reason": verdict.reason})

    def left_behind(self, allow: Iterable[str] = ()) -> dict[str, int]:
        allowed = set(allow)
        return {c.value: self.by_class[c.value] for c in LEFT_BEHIND
                if self.by_class[c.value] and c.value not in allowed}

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_class": dict(self.by_class),
                "by_state": dict(self.by_state),
                "by_queue": {q: dict(c) for q, c in sorted(self.by_queue.items())},
                "by_task": {t: dict(c) for t, c in sorted(self.by_task.items())},
                "orphans": self.orphans, "jobs": self.details,
                "plain_procrastinate_misreads": {t: dict(c) for t, c in
                                                 sorted(self.plain_procrastinate.items())}}


def audit(source: QueueBackend, classifier: Classifier, *, queues: list[str] | None = None,
          batch_size: int = 1000, every_job: bool = False) -> AuditReport:
    """Read every job of the source (all states) and classify it. Changes nothing."""
    report = AuditReport(every_job=every_job)
    classifier.read_dependencies(source, batch_size)
    for batch in source.batches(queues=queues, batch_size=batch_size):
        for raw in batch:
            report.add(*classifier(raw))
    return report
