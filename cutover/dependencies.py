"""Dependencies (RQ's ``depends_on``) across a cut-over.

The rule (docs/architecture.md, "Dependencies"): a dependency group resolves where its parents
run. A job that deferred jobs wait on stays on the source, where RQ (or the cutover worker, with
the same rules) queues the dependents when it succeeds; a deferred job moves only once every one
of its parents is done, wherever the parent ran, and then it moves as a queued job. Groups an
older version split (a parent moved, its dependent left deferred) resolve the same way: the
parent's outcome is read on the target.

This module reads the facts once per pass (the source's deferred jobs and their parents'
states on both sides); ``cutover.audit.classify`` decides with them, so audit, ``drain
--dry-run`` and drain classify these jobs the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from cutover.backend import QueueBackend
from cutover.record import JobRecord, JobState


@runtime_checkable
class ReleasesDeferred(Protocol):
    """A backend that keeps deferred jobs (RQ) and can queue them on the drain's word."""

    def release_deferred(self, job_ids: Sequence[str], *, check: bool = True) -> list[str]:
        """Queue these deferred jobs (``check``: only when met by the backend's own rules)."""
        ...

    def dependency_states(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """The states of those of these jobs the backend has, read in bulk (no job's place is
        looked up: only whether it is done matters here)."""
        ...

    def keep_waiting(self, waiters: Mapping[str, Sequence[str]]) -> None:
        """Record that these deferred jobs wait on these parents (parent id -> job ids), which
        are no longer on this backend."""
        ...


@dataclasses.dataclass(frozen=True)
class Parent:
    """Where a parent job is and in what state (``state`` None: on neither side)."""

    id: str
    state: JobState | None
    where: str  # the backend's name, or "" when gone from both
    on_source: bool = False

    def met_for(self, child: JobRecord) -> bool:
        """RQ's rule: finished; failed when the child allows failures; a parent gone from
        both sides counts as finished (RQ deletes finished jobs after their result TTL)."""
        if self.state is None or self.state is JobState.FINISHED:
            return True
        return self.state is JobState.FAILED and child.dependency_failures_allowed

    def describe(self) -> str:
        if self.state is None:
            return f"{self.id} (gone)"
        return f"{self.id} ({self.state.value} on {self.where})"


@dataclasses.dataclass
class DependencyView:
    """The source's deferred jobs, their parents, and who waits on whom."""

    parents: dict[str, Parent] = dataclasses.field(default_factory=dict)
    #: parent id -> ids of deferred jobs on the source that wait on it
    waiters: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: deferred jobs whose parents are all done and that jobs wait on (queued on the source)
    releasable: list[str] = dataclasses.field(default_factory=list)
    #: whether the target was read (without it, a parent gone from the source is unknown)
    target_read: bool = True
    #: deferred jobs whose parents are all done: nothing but a drain, or the cutover worker's
    #: sweep on RQ, queues them now
    ready: list[JobRecord] = dataclasses.field(default_factory=list)

    @classmethod
    def read(cls, source: QueueBackend, target: QueueBackend | None, *,
             batch_size: int = 1000) -> DependencyView:
        """Read the facts (changes nothing). Empty for a backend without dependencies."""
        view = cls(target_read=target is not None)
        if not source.capabilities.dependencies:
            return view
        children: list[JobRecord] = []
        for batch in source.batches(states=[JobState.DEFERRED], batch_size=batch_size):
            children += [r for r in batch if r.state is JobState.DEFERRED]
        for child in children:
            for parent_id in child.depends_on:
                view.waiters.setdefault(parent_id, []).append(child.id)
        on_source = _states(source, list(view.waiters))
        for parent_id in view.waiters:
            state = on_source.get(parent_id)
            view.parents[parent_id] = (Parent(parent_id, state, source.name, on_source=True)
                                       if state is not None else _on_target(parent_id, target))
        for child in children:
            if child.depends_on and not view.blocking(child):
                view.ready.append(child)
                if child.id in view.waiters:
                    view.releasable.append(child.id)
        return view

    def blocking(self, record: JobRecord) -> list[str]:
        """The parents of a deferred job that are not done (in its sense of done), each
        described for a person; empty when it may run."""
        out = []
        for parent_id in record.depends_on:
            parent = self.parents.get(parent_id)
            if parent is None:
                out.append(f"{parent_id} (not looked up: enqueued since this pass began)")
            elif parent.state is None and not self.target_read:
                out.append(f"{parent_id} (not on the source; name the target to look there)")
            elif not parent.met_for(record):
                out.append(parent.describe())
        return out

    def waiting_on(self, job_id: str) -> list[str]:
        """Deferred jobs on the source that wait on this one."""
        return self.waiters.get(job_id, [])


def _states(source: QueueBackend, job_ids: list[str]) -> dict[str, JobState]:
    """The states of the jobs the source has (read in bulk where the backend can)."""
    if isinstance(source, ReleasesDeferred):
        return source.dependency_states(job_ids)
    return {r.id: r.state for r in map(source.get, job_ids) if r is not None}


def _on_target(job_id: str, target: QueueBackend | None) -> Parent:
    record = target.get(job_id) if target is not None else None
    if record is None or target is None:
        return Parent(job_id, None, "")
    return Parent(job_id, record.state, target.name)


def release(source: QueueBackend, view: DependencyView,
            queues: Collection[str] | None = None) -> list[str]:
    """Act on the facts, on the source: remember, for each parent that left it while deferred
    jobs wait on it, that they do (an older version forgot: without it, the source's workers
    would take the parent's absence for "finished and expired"); then queue the deferred jobs
    whose parents are done on either side and that other deferred jobs wait on (so the group
    keeps resolving there). ``queues``: only jobs of these queues (the drain's ``--queue``).
    Returns the ids queued."""
    if not isinstance(source, ReleasesDeferred):
        return []
    away = {p.id: view.waiters[p.id] for p in view.parents.values()
            if not p.on_source and p.state is not None and p.id in view.waiters}
    if away:
        source.keep_waiting(away)
    releasable = set(view.releasable)
    ids = [r.id for r in view.ready
           if r.id in releasable and (queues is None or r.queue in queues)]
    return source.release_deferred(ids, check=False) if ids else []



def stranded(backend: QueueBackend, key: str, other: QueueBackend) -> list[dict[str, Any]]:
    """Deferred jobs of ``backend`` whose parents are all done (on it, or on ``other``), for
    `cutover verify`: no worker of either side runs them until a drain (or, on RQ, the cutover
    worker's sweep) queues or moves them."""
    if not backend.capabilities.dependencies:
        return []
    view = DependencyView.read(backend, other)
    return [{"id": r.id, "backend": key, "queue": r.queue, "task": r.task,
             "parents": ", ".join(view.parents[p].describe() for p in r.depends_on)}
            for r in view.ready]
