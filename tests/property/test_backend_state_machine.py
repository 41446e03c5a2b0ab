"""A hypothesis state machine drives the in-memory backend and a real one with the same random
operations and compares every observable answer."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cutover import InMemoryBackend
from cutover.backend import QueueBackend
from cutover.record import JobState, utcnow
from cutover.testing import tasks
from cutover.testing.plugin import backend_for
from cutover.testing.tasks import registry
from cutover.worker import Worker

DELAYS = st.sampled_from([None, -30, 3600])


class BackendsAgree(RuleBasedStateMachine):
    adapter = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        self.real: QueueBackend = self._stack.enter_context(backend_for(self.adapter))
        self.model = InMemoryBackend()
        self.ids: list[str] = []
        self.counter = itertools.count()

    def teardown(self) -> None:
        self._stack.close()

    def both(self, method: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        return (getattr(self.model, method)(*args, **kwargs),
                getattr(self.real, method)(*args, **kwargs))

    @rule(key=st.sampled_from([None, "k1", "k2"]), queue=st.sampled_from(["default", "q2"]),
          delay=DELAYS, fail=st.booleans())
    def enqueue(self, key: str | None, queue: str, delay: int | None, fail: bool) -> None:
        run_at = utcnow() + dt.timedelta(seconds=delay) if delay is not None else None
        job_id = f"job-{next(self.counter)}"
        record = (registry.make_record(tasks.boom, (), job_id=job_id, job_key=key, queue=queue,
                                       run_at=run_at) if fail else
                  registry.make_record(tasks.add, (1, 2), job_id=job_id, job_key=key,
                                       queue=queue, run_at=run_at))
        model, real = self.both("enqueue", [record])
        assert model == real
        self.ids.append(job_id)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), owner=st.sampled_from(["a", "b"]))
    def take(self, data: st.DataObject, owner: str) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.ids), max_size=4, unique=True))
        model, real = self.both("take", ids, owner)
        assert sorted(r.id for r in model.taken) == sorted(r.id for r in real.taken)
        assert model.refused == real.refused

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), owner=st.sampled_from(["a", "b"]))
    def give_back(self, data: st.DataObject, owner: str) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.ids), max_size=4, unique=True))
        model, real = self.both("give_back", ids, owner)
        assert model == real

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.ids), max_size=3, unique=True))
        model, real = self.both("remove", ids)
        assert model == real

    @rule(queue=st.sampled_from([None, "q2"]))
    def work(self, queue: str | None) -> None:
        for backend in (self.model, self.real):
            Worker(backend, registry, queues=[queue] if queue else None, burst=True,
                   poll_interval=0.01).run(install_signal_handlers=False)

    @invariant()
    def same_jobs_in_same_states(self) -> None:
        model = {r.id: (r.state, r.queue, r.attempts, r.digest()) for r in self.model.snapshot()}
        real = {r.id: (r.state, r.queue, r.attempts, r.digest()) for r in self.real.snapshot()}
        assert model == real

    @invariant()
    def same_counts(self) -> None:
        def totals(backend: QueueBackend) -> dict[tuple[str, JobState], int]:
            return {(q, s): n for q, per in backend.counts().items() for s, n in per.items()
                    if n and s is not JobState.FINISHED}

        assert totals(self.model) == totals(self.real)


SETTINGS = settings(max_examples=15, stateful_step_count=12, deadline=None)


@pytest.mark.rq
class RQAgrees(BackendsAgree):
    adapter = "rq"


@pytest.mark.pg
class ProcrastinateAgrees(BackendsAgree):
    adapter = "procrastinate"


TestRQAgreesWithMemory = pytest.mark.rq(RQAgrees.TestCase)
TestRQAgreesWithMemory.settings = SETTINGS
TestProcrastinateAgreesWithMemory = pytest.mark.pg(ProcrastinateAgrees.TestCase)
TestProcrastinateAgreesWithMemory.settings = SETTINGS
