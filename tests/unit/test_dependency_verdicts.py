"""How a job of a dependency group is classified, from the facts alone (no server): a group
resolves where its parents run; a dependent moves once all its parents are done."""

from __future__ import annotations

import pytest

from cutover import InMemoryBackend
from cutover.audit import Classifier, JobClass, audit, classify
from cutover.backend import Capabilities
from cutover.dependencies import DependencyView, Parent
from cutover.record import JobRecord, JobState
from cutover.testing.tasks import registry

TASK = "cutover.testing.tasks.add"


def job(job_id: str, state: JobState = JobState.QUEUED, depends_on: tuple[str, ...] = (),
        allow: bool = False) -> JobRecord:
    return JobRecord(id=job_id, task=TASK, kwargs={"a": 1, "b": 2}, state=state,
                     depends_on=depends_on, dependency_failures_allowed=allow)


def view(parents: dict[str, tuple[JobState | None, str]], waiters: dict[str, list[str]],
         target_read: bool = True) -> DependencyView:
    return DependencyView(
        parents={i: Parent(i, state, where, on_source=where == "rq")
                 for i, (state, where) in parents.items()},
        waiters=waiters, target_read=target_read)


def verdict(record: JobRecord, facts: DependencyView) -> tuple[JobClass, str]:
    v = classify(record, registry, Capabilities(), dependencies=facts)
    return v.job_class, v.reason


def test_a_job_deferred_jobs_wait_on_stays_on_the_source() -> None:
    facts = view({"a": (JobState.QUEUED, "rq")}, {"a": ["b"]})
    cls, reason = verdict(job("a"), facts)
    assert cls is JobClass.IN_PLACE and reason.startswith("deferred job(s) b wait on it")
    assert verdict(job("loner"), facts)[0] is JobClass.MOVABLE


@pytest.mark.parametrize(("state", "where", "allow", "moves"), [
    (JobState.FINISHED, "rq", False, True),
    (JobState.FINISHED, "procrastinate", False, True),   # it ran on the target
    (None, "", False, True),                              # gone from both: RQ's "expired"
    (JobState.FAILED, "rq", False, False),
    (JobState.FAILED, "rq", True, True),                  # Dependency(allow_failure=True)
    (JobState.CANCELED, "rq", True, False),
    (JobState.QUEUED, "procrastinate", False, False),     # moved, not run yet
    (JobState.STARTED, "rq", False, False),
    (JobState.HELD, "rq", False, False),
])
def test_a_deferred_job_moves_once_every_parent_is_done(
        state: JobState | None, where: str, allow: bool, moves: bool) -> None:
    facts = view({"a": (state, where), "d": (JobState.FINISHED, "rq")}, {"a": ["e"], "d": ["e"]})
    cls, reason = verdict(job("e", JobState.DEFERRED, ("a", "d"), allow), facts)
    assert cls.moves is moves, reason
    if not moves:
        assert cls is JobClass.IN_PLACE and f"waits on a ({state.value} on {where})" in reason  # type: ignore[union-attr]


def test_a_done_dependent_that_others_wait_on_is_queued_on_the_source_not_moved() -> None:
    facts = view({"a": (JobState.FINISHED, "rq"), "b": (JobState.DEFERRED, "rq")},
                 {"a": ["b"], "b": ["c"]})
    cls, reason = verdict(job("b", JobState.DEFERRED, ("a",)), facts)
    assert cls is JobClass.IN_PLACE and "the drain queues it on the source" in reason


def test_without_the_target_a_parent_gone_from_the_source_is_not_taken_for_done() -> None:
    facts = view({"a": (None, "")}, {"a": ["b"]}, target_read=False)
    cls, reason = verdict(job("b", JobState.DEFERRED, ("a",)), facts)
    assert cls is JobClass.IN_PLACE and "name the target" in reason


def test_a_deferred_job_that_waits_on_nothing_stays_and_says_why() -> None:
    cls, reason = verdict(job("b", JobState.DEFERRED), view({}, {}))
    assert cls is JobClass.IN_PLACE and "waits on no job" in reason


def test_a_backend_without_dependencies_keeps_its_deferred_jobs_in_place() -> None:
    source = InMemoryBackend()
    source.put([job("b", JobState.DEFERRED), job("c")])
    classifier = Classifier(registry, None, capabilities=Capabilities())
    verdicts = audit(source, classifier, every_job=True).verdicts
    assert verdicts == {"b": "in_place", "c": "movable"}
    assert classifier.dependencies is None
