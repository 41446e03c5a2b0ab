"""The contract suite: the uniform semantics every adapter must show.

Run it against an adapter by subclassing :class:`BackendContract` in a test module; the
``cutover_backend`` fixture (from this package's pytest plugin) is parametrised over every
installed adapter::

    from cutover.testing.contract import BackendContract

    class TestMyAdapter(BackendContract):
        pass
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import time
import uuid
from typing import Any

import pytest

from cutover import InMemoryBackend, adapters
from cutover.backend import QueueBackend, StoreIdentity
from cutover.errors import JobConflictError
from cutover.record import JobRecord, JobState, utcnow
from cutover.testing import tasks
from cutover.testing.tasks import registry
from cutover.worker import Worker

SAMPLE_KWARGS: dict[str, Any] = {
    "when": dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
    "naive": dt.datetime(2026, 1, 2, 3, 4, 5),
    "day": dt.date(2026, 1, 2),
    "at": dt.time(13, 14, 15),
    "amount": decimal.Decimal("12.3400"),
    "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "blob": b"\x00\xffbytes",
    "pair": (1, "two"),
    "tags": {"a", "b"},
    "nested": {"list": [1, 2.5, None, True], "map": {"k": (3, 4)}},
}


def run_burst(backend: QueueBackend, queues: list[str] | None = None) -> Worker:
    worker = Worker(backend, registry, queues=queues, burst=True, poll_interval=0.05)
    worker.run(install_signal_handlers=False)
    return worker


def make(task: str, *args: Any, **kwargs: Any) -> JobRecord:
    opts = {k: kwargs.pop(k) for k in ("job_id", "job_key", "queue", "run_at", "priority")
            if k in kwargs}
    return registry.make_record(f"cutover.testing.tasks.{task}", args, kwargs, **opts)


def waiting_backlog(backend: QueueBackend, *, queued: int, scheduled: int) -> list[JobRecord]:
    """Queued jobs on two queues and jobs scheduled an hour ahead, enqueued."""
    later = utcnow() + dt.timedelta(hours=1)
    records = [make("add", i, i, queue=f"q{i % 2}") for i in range(queued)]
    records += [make("add", i, 0, run_at=later) for i in range(scheduled)]
    backend.enqueue(records)
    return records


def total(counts: dict[str, dict[JobState, int]], state: JobState) -> int:
    return sum(per[state] for per in counts.values())


class BackendContract:
    """Every adapter passes these, the in-memory one included."""

    @pytest.fixture(autouse=True)
    def _reset_tasks(self) -> None:
        tasks.reset()

    # -- identity and fidelity ---------------------------------------------------------------
    def test_the_store_has_one_identity_whatever_opens_it(self, cutover_backend: QueueBackend
                                                         ) -> None:
        found = cutover_backend.identity()
        assert isinstance(found, StoreIdentity) and found.key and found.url == cutover_backend.url
        assert "://" not in found.key and "***" not in found.key  # a store, not a spelling
        cutover_backend.enqueue([make("add", 1, 2)])
        assert cutover_backend.identity() == found  # the jobs are not the store's name
        if cutover_backend.capabilities.shared and "***" not in cutover_backend.url:
            again = adapters.open_backend(f"{cutover_backend.name}+{cutover_backend.url}")
            try:
                assert again.identity().key == found.key
            finally:
                again.close()

    def test_enqueued_job_reads_back_with_the_same_digest(self, cutover_backend: QueueBackend
                                                          ) -> None:
        record = make("echo", **SAMPLE_KWARGS)
        [job_id] = cutover_backend.enqueue([record])
        assert job_id == record.id
        stored = cutover_backend.get(job_id)
        assert stored is not None
        assert stored.differences(record) == {}
        assert stored.digest() == record.digest()
        assert stored.state is JobState.QUEUED

    def test_digest_is_equal_across_backends(self, cutover_backend: QueueBackend) -> None:
        memory = InMemoryBackend()
        record = make("echo", job_key="k-digest", priority=3, **SAMPLE_KWARGS)
        cutover_backend.enqueue([record])
        memory.enqueue([record])
        a, b = cutover_backend.get(record.id), memory.get(record.id)
        assert a is not None and b is not None
        assert a.digest() == b.digest() == record.digest()

    def test_put_keeps_identity_schedule_and_retry_state(self, cutover_backend: QueueBackend
                                                        ) -> None:
        record = JobRecord(id="put-1", task="cutover.testing.tasks.echo",
                           kwargs={"x": decimal.Decimal("1.5")}, queue="q1", priority=5,
                           run_at=utcnow() + dt.timedelta(hours=1), attempts=1, max_attempts=4,
                           retry_intervals=(5.0, 10.0, 20.0), job_key="put-key",
                           state=JobState.SCHEDULED, origin="elsewhere")
        assert cutover_backend.put([record]) == ["put-1"]
        stored = cutover_backend.get("put-1")
        assert stored is not None
        assert stored.differences(record) == {}
        assert stored.state is JobState.SCHEDULED

    def test_args_arrive_as_they_were_sent(self, cutover_backend: QueueBackend) -> None:
        cutover_backend.enqueue([make("echo", **SAMPLE_KWARGS)])
        run_burst(cutover_backend)
        assert tasks.calls == [("echo", SAMPLE_KWARGS)]

    def test_positional_args_are_bound_to_names(self, cutover_backend: QueueBackend) -> None:
        record = make("add", 2, 3)
        assert record.args == () and dict(record.kwargs) == {"a": 2, "b": 3}
        cutover_backend.enqueue([record])
        run_burst(cutover_backend)
        done = cutover_backend.get(record.id)
        assert done is not None and done.state is JobState.FINISHED and done.result == 5

    # -- job key ---------------------------------------------------------------------------
    def test_live_job_key_returns_the_existing_job(self, cutover_backend: QueueBackend) -> None:
        first = make("add", 1, 1, job_key="dedupe")
        second = make("add", 2, 2, job_key="dedupe")
        assert cutover_backend.enqueue([first]) == [first.id]
        assert cutover_backend.enqueue([second]) == [first.id]
        assert cutover_backend.get(second.id) is None
        assert total(cutover_backend.counts(), JobState.QUEUED) == 1

    def test_job_key_is_free_again_once_the_job_ended(self, cutover_backend: QueueBackend
                                                      ) -> None:
        first = make("add", 1, 1, job_key="again")
        cutover_backend.enqueue([first])
        run_burst(cutover_backend)
        second = make("add", 2, 2, job_key="again")
        assert cutover_backend.enqueue([second]) == [second.id]

    def test_same_id_twice_enqueues_once(self, cutover_backend: QueueBackend) -> None:
        record = make("add", 1, 2)
        assert cutover_backend.enqueue([record]) == [record.id]
        assert cutover_backend.enqueue([record]) == [record.id]
        assert total(cutover_backend.counts(), JobState.QUEUED) == 1
        run_burst(cutover_backend)
        assert tasks.calls == [("add", {"a": 1, "b": 2})]

    # -- scheduling, priority, routing -----------------------------------------------------
    def test_future_job_is_scheduled_and_not_run(self, cutover_backend: QueueBackend) -> None:
        later = make("add", 1, 1, run_at=utcnow() + dt.timedelta(hours=1))
        due = make("add", 2, 2, run_at=utcnow() - dt.timedelta(seconds=5))
        cutover_backend.enqueue([later, due])
        stored = cutover_backend.get(later.id)
        assert stored is not None and stored.state is JobState.SCHEDULED
        assert stored.run_at == later.run_at
        run_burst(cutover_backend)
        assert tasks.calls == [("add", {"a": 2, "b": 2})]
        assert total(cutover_backend.counts(), JobState.SCHEDULED) == 1

    def test_priority_order(self, cutover_backend: QueueBackend) -> None:
        if not cutover_backend.capabilities.priority:
            pytest.skip(f"{cutover_backend.name} declares no priority")
        cutover_backend.enqueue([make("add", 0, i, priority=i) for i in (1, 5, 3)])
        run_burst(cutover_backend)
        assert [c[1]["b"] for c in tasks.calls] == [5, 3, 1]

    def test_fifo_within_a_priority(self, cutover_backend: QueueBackend) -> None:
        cutover_backend.enqueue([make("add", 0, i) for i in range(5)])
        run_burst(cutover_backend)
        assert [c[1]["b"] for c in tasks.calls] == list(range(5))

    def test_queue_routing(self, cutover_backend: QueueBackend) -> None:
        mine = make("elsewhere", 1)
        assert mine.queue == "other"
        cutover_backend.enqueue([mine, make("add", 1, 1), make("add", 2, 2, queue="third")])
        run_burst(cutover_backend, queues=["other"])
        assert tasks.calls == [("elsewhere", {"n": 1})]
        counts = cutover_backend.counts()
        assert counts["other"][JobState.FINISHED] == 1
        assert counts["default"][JobState.QUEUED] == 1
        assert counts["third"][JobState.QUEUED] == 1

    # -- failures and retries ----------------------------------------------------------------
    def test_failure_is_visible_with_its_error(self, cutover_backend: QueueBackend) -> None:
        record = make("boom", message="it broke")
        cutover_backend.enqueue([record])
        worker = run_burst(cutover_backend)
        assert worker.report.failed == 1
        done = cutover_backend.get(record.id)
        assert done is not None
        assert done.state is JobState.FAILED
        assert done.error is not None and "ValueError: it broke" in done.error
        assert done.attempts == 1
        assert total(cutover_backend.counts(), JobState.FAILED) == 1

    def test_retries_until_success_within_budget(self, cutover_backend: QueueBackend) -> None:
        record = make("flaky", key=uuid.uuid4().hex, failures=2)
        cutover_backend.enqueue([record])
        worker = run_burst(cutover_backend)
        done = cutover_backend.get(record.id)
        assert done is not None and done.state is JobState.FINISHED
        assert done.attempts == 3 and worker.report.retried == 2
        assert done.result == "ok after 3"
        assert done.error is None

    def test_retry_budget_exhausted_fails(self, cutover_backend: QueueBackend) -> None:
        record = make("flaky", key=uuid.uuid4().hex, failures=5)
        cutover_backend.enqueue([record])
        run_burst(cutover_backend)
        done = cutover_backend.get(record.id)
        assert done is not None and done.state is JobState.FAILED
        assert done.attempts == 3
        assert len([c for c in tasks.calls if c[0] == "flaky"]) == 3

    def test_exponential_backoff_schedules_the_retry(self, cutover_backend: QueueBackend
                                                     ) -> None:
        record = make("slow_retry")
        assert record.retry_intervals == (30.0, 60.0)
        cutover_backend.enqueue([record])
        before = utcnow()
        run_burst(cutover_backend)
        waiting = cutover_backend.get(record.id)
        assert waiting is not None and waiting.state is JobState.SCHEDULED
        assert waiting.attempts == 1
        assert waiting.run_at is not None
        delay = (waiting.run_at - before).total_seconds()
        assert 28 <= delay <= 33
        assert waiting.retry_delay(2) == 60.0

    # -- jobs whose worker died -------------------------------------------------------------
    def _stall(self, backend: QueueBackend, record: JobRecord) -> None:
        """Claim ``record`` as a worker that then dies: it never beats nor records an outcome."""
        backend.enqueue([record])
        claimed = backend.claim(None, f"dead-{uuid.uuid4().hex[:8]}", lambda _: None)
        assert claimed is not None and claimed.id == record.id
        time.sleep(0.05)  # its last sign of life is older than the recovery's limit below

    def test_a_stalled_job_whose_budget_is_spent_fails_for_good(
            self, cutover_backend: QueueBackend) -> None:
        record = make("boom")
        assert record.max_attempts == 1
        self._stall(cutover_backend, record)
        assert record.id in cutover_backend.recover_stalled(0.01)
        done = cutover_backend.get(record.id)
        assert done is not None and done.state is JobState.FAILED
        assert done.attempts == 1
        assert done.error is not None
        assert "its worker died while running it (attempt 1 of 1)" in done.error
        assert total(cutover_backend.counts(), JobState.FAILED) == 1
        # Counted once: a second recovery finds nothing, and no worker runs it again.
        assert record.id not in cutover_backend.recover_stalled(0.01)
        assert run_burst(cutover_backend).report.failed == 0
        again = cutover_backend.get(record.id)
        assert again is not None and again.attempts == 1

    def test_a_stalled_job_within_its_budget_is_retried_with_the_attempt_counted(
            self, cutover_backend: QueueBackend) -> None:
        record = make("slow_retry")
        self._stall(cutover_backend, record)
        before = utcnow()
        assert record.id in cutover_backend.recover_stalled(0.01)
        waiting = cutover_backend.get(record.id)
        assert waiting is not None and waiting.state is JobState.SCHEDULED
        assert waiting.attempts == 1
        assert waiting.error is not None
        assert "its worker died while running it (attempt 1 of 3)" in waiting.error
        assert waiting.run_at is not None  # the job's own backoff, as a failed attempt's
        assert 28 <= (waiting.run_at - before).total_seconds() <= 33
        assert record.id not in cutover_backend.recover_stalled(0.01)

    def test_a_job_whose_outcome_was_recorded_is_not_recovered(
            self, cutover_backend: QueueBackend) -> None:
        record = make("add", 1, 2)
        cutover_backend.enqueue([record])
        claimed = cutover_backend.claim(None, f"dead-{uuid.uuid4().hex[:8]}", lambda _: None)
        assert claimed is not None
        cutover_backend.complete(claimed, "dead", 3)  # then died before anything else
        time.sleep(0.05)
        assert record.id not in cutover_backend.recover_stalled(0.01)
        done = cutover_backend.get(record.id)
        assert done is not None and done.state is JobState.FINISHED and done.attempts == 1

    # -- counts and snapshots ----------------------------------------------------------------
    def test_counts_by_state_match_the_snapshot(self, cutover_backend: QueueBackend) -> None:
        cutover_backend.enqueue([make("add", 1, i) for i in range(3)])
        cutover_backend.enqueue([make("add", 2, 2, run_at=utcnow() + dt.timedelta(hours=1))])
        cutover_backend.enqueue([make("boom")])
        counts = cutover_backend.counts()
        assert total(counts, JobState.QUEUED) == 4
        assert total(counts, JobState.SCHEDULED) == 1
        by_state: dict[JobState, int] = {}
        for r in cutover_backend.snapshot():
            by_state[r.state] = by_state.get(r.state, 0) + 1
        assert by_state == {JobState.QUEUED: 4, JobState.SCHEDULED: 1}

    def test_snapshot_is_complete_and_filters(self, cutover_backend: QueueBackend) -> None:
        records = [make("add", i, i, queue=f"q{i % 3}") for i in range(25)]
        cutover_backend.enqueue(records)
        assert {r.id for r in cutover_backend.snapshot(batch_size=7)} == {r.id for r in records}
        q1 = {r.id for r in cutover_backend.snapshot(queues=["q1"], batch_size=4)}
        assert q1 == {r.id for r in records if r.queue == "q1"}
        assert list(cutover_backend.snapshot(states=[JobState.FAILED])) == []

    def test_batches_keep_their_place_while_the_consumer_takes(
            self, cutover_backend: QueueBackend) -> None:
        records = waiting_backlog(cutover_backend, queued=23, scheduled=7)
        seen: list[str] = []
        for batch in cutover_backend.batches(states=[JobState.QUEUED, JobState.SCHEDULED],
                                             batch_size=4):
            assert 0 < len(batch) <= 4
            ids = [r.id for r in batch]
            seen += ids
            cutover_backend.take(ids[::2], owner="reader")  # take some, leave the rest
        assert sorted(seen) == sorted(r.id for r in records)
        assert total(cutover_backend.counts(), JobState.HELD) == len(
            [i for i in seen if cutover_backend.get(i).state is JobState.HELD])  # type: ignore[union-attr]
        held = [r for r in cutover_backend.snapshot(states=[JobState.HELD])]
        assert {r.holder for r in held} == {"reader"}

    def test_partitions_split_the_jobs_between_readers_in_step(
            self, cutover_backend: QueueBackend) -> None:
        records = waiting_backlog(cutover_backend, queued=40, scheduled=9)
        n = 3
        readers = [cutover_backend.batches(states=[JobState.QUEUED, JobState.SCHEDULED],
                                           batch_size=5, partition=(k, n)) for k in range(n)]
        shares: list[list[str]] = [[] for _ in range(n)]
        for windows in itertools.zip_longest(*readers):  # one window each, then the next
            for k, batch in enumerate(windows):
                ids = [r.id for r in batch or []]
                shares[k] += ids
                cutover_backend.take(ids[::2], owner="reader")  # take some, leave the rest
        everyone = [i for share in shares for i in share]
        assert sorted(everyone) == sorted(r.id for r in records)  # each job once, none missing
        assert all(shares), "every reader got a share"

    # -- take / give back / put / remove ---------------------------------------------------
    def test_taken_jobs_are_out_of_reach_of_workers(self, cutover_backend: QueueBackend) -> None:
        records = [make("add", 1, 1), make("add", 2, 2, run_at=utcnow() + dt.timedelta(hours=1))]
        cutover_backend.enqueue(records)
        taken = cutover_backend.take([r.id for r in records], owner="drain-1")
        assert {r.id for r in taken.taken} == {r.id for r in records}
        assert all(r.state is JobState.HELD for r in taken.taken)
        assert taken.refused == {}
        run_burst(cutover_backend)
        assert tasks.calls == []
        assert total(cutover_backend.counts(), JobState.HELD) == 2

    def test_take_is_idempotent_and_exclusive(self, cutover_backend: QueueBackend) -> None:
        record = make("add", 1, 1)
        cutover_backend.enqueue([record])
        assert len(cutover_backend.take([record.id], owner="a").taken) == 1
        again = cutover_backend.take([record.id], owner="a")
        assert [r.id for r in again.taken] == [record.id]
        other = cutover_backend.take([record.id, "no-such-job"], owner="b")
        assert other.taken == []
        assert other.refused[record.id] == "held by a"
        assert other.refused["no-such-job"] == "missing"

    def test_take_refuses_finished_jobs(self, cutover_backend: QueueBackend) -> None:
        record = make("add", 1, 1)
        cutover_backend.enqueue([record])
        run_burst(cutover_backend)
        result = cutover_backend.take([record.id], owner="a")
        assert result.taken == [] and result.refused == {record.id: "finished"}

    def test_give_back_restores_the_job(self, cutover_backend: QueueBackend) -> None:
        now_job = make("add", 1, 1)
        later = make("add", 2, 2, run_at=utcnow() + dt.timedelta(hours=1))
        cutover_backend.enqueue([now_job, later])
        cutover_backend.take([now_job.id, later.id], owner="a")
        assert cutover_backend.give_back([now_job.id, later.id], owner="b") == 0
        assert cutover_backend.give_back([now_job.id, later.id], owner="a") == 2
        assert cutover_backend.give_back([now_job.id], owner="a") == 0
        back = cutover_backend.get(later.id)
        assert back is not None and back.state is JobState.SCHEDULED
        assert back.run_at == later.run_at
        run_burst(cutover_backend)
        assert tasks.calls == [("add", {"a": 1, "b": 1})]

    def test_what_it_says_it_can_hold_it_holds(self, cutover_backend: QueueBackend) -> None:
        """``cannot_hold`` is complete: every awkward record it accepts is put and read back
        unaltered (so a drain's put does not fail for the job's own sake); a refusal says
        why."""
        base = make("add", 1, 2)
        far = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
        awkward = [base.replace(id=i) for i in ("with:colon", "with\nnewline", "dot.and space",
                                                "nul\x00id", "")]
        changes: list[dict[str, Any]] = [
            {"queue": "q" * 200}, {"queue": ""}, {"queue": "nul\x00queue"},
            {"task": "t" * 200}, {"job_key": "key\x00nul"}, {"priority": 2**40},
            {"max_attempts": 3, "retry_intervals": (-1.0,)},
            {"max_attempts": 3, "retry_intervals": (float("inf"),)},
            {"run_at": far}, {"attempts": 2**33, "max_attempts": 2**33 + 1}]
        awkward += [base.replace(id=f"awkward-{n}", **change)
                    for n, change in enumerate(changes)]
        accepted = 0
        for record in awkward:
            reasons = cutover_backend.cannot_hold(record)
            if reasons:
                assert all(isinstance(r, str) and r for r in reasons), reasons
                continue
            cutover_backend.put([record])
            got = cutover_backend.get(record.id)
            assert got is not None, repr(record.id)
            assert got.digest() == record.digest(), (record.id, got.differences(record))
            accepted += 1
        assert accepted > 0 or cutover_backend.name != "memory"

    def test_put_is_idempotent_and_refuses_conflicts(self, cutover_backend: QueueBackend
                                                     ) -> None:
        record = make("add", 1, 1)
        assert cutover_backend.put([record]) == [record.id]
        assert cutover_backend.put([record]) == []
        assert total(cutover_backend.counts(), JobState.QUEUED) == 1
        with pytest.raises(JobConflictError):
            cutover_backend.put([record.replace(kwargs={"a": 9, "b": 9})])

    def test_move_between_backends_keeps_the_digest(self, cutover_backend: QueueBackend) -> None:
        memory = InMemoryBackend()
        record = make("echo", job_key="mv", **SAMPLE_KWARGS)
        memory.enqueue([record])
        held = memory.take([record.id], owner="mover").taken
        assert cutover_backend.put(held) == [record.id]
        assert memory.remove([record.id]) == 1
        moved = cutover_backend.get(record.id)
        assert moved is not None and moved.digest() == record.digest()
        assert moved.state is JobState.QUEUED
        run_burst(cutover_backend)
        assert tasks.calls == [("echo", SAMPLE_KWARGS)]

    def test_remove_is_idempotent(self, cutover_backend: QueueBackend) -> None:
        records = [make("add", 1, 1, job_key="rm"), make("add", 2, 2)]
        cutover_backend.enqueue(records)
        assert cutover_backend.remove([r.id for r in records]) == 2
        assert cutover_backend.remove([r.id for r in records]) == 0
        assert list(cutover_backend.snapshot()) == []
        fresh = make("add", 3, 3, job_key="rm")
        assert cutover_backend.enqueue([fresh]) == [fresh.id]

    # -- workers ---------------------------------------------------------------------------
    def test_unknown_task_is_skipped_and_left_in_place(self, cutover_backend: QueueBackend
                                                       ) -> None:
        stranger = JobRecord(id="stranger", task="nowhere.known", kwargs={"x": 1})
        cutover_backend.put([stranger])
        cutover_backend.enqueue([make("add", 1, 1)])
        worker = run_burst(cutover_backend)
        assert "stranger" in worker.report.skipped
        assert "unknown task" in worker.report.skipped["stranger"]
        left = cutover_backend.get("stranger")
        assert left is not None and left.state is JobState.QUEUED and left.attempts == 0
        assert tasks.calls == [("add", {"a": 1, "b": 1})]

    def test_alias_resolves_a_renamed_task(self, cutover_backend: QueueBackend) -> None:
        old = JobRecord(id="old-name", task="cutover.testing.tasks.old_echo", kwargs={"x": 1})
        cutover_backend.put([old])
        run_burst(cutover_backend)
        assert tasks.calls == [("echo", {"x": 1})]

    def test_paused_queue_is_not_worked(self, cutover_backend: QueueBackend) -> None:
        cutover_backend.enqueue([make("add", 1, 1), make("elsewhere", 2)])
        cutover_backend.pause(["default"])
        assert cutover_backend.paused() == {"default"}
        run_burst(cutover_backend)
        assert tasks.calls == [("elsewhere", {"n": 2})]
        cutover_backend.resume()
        assert cutover_backend.paused() == set()
        run_burst(cutover_backend)
        assert tasks.calls[-1] == ("add", {"a": 1, "b": 1})

    def test_concurrent_workers_run_each_job_once(self, cutover_backend: QueueBackend) -> None:
        records = [make("add", i, 0) for i in range(40)]
        cutover_backend.enqueue(records)
        worker = Worker(cutover_backend, registry, concurrency=4, burst=True, poll_interval=0.05)
        worker.run(install_signal_handlers=False)
        assert sorted(c[1]["a"] for c in tasks.calls) == list(range(40))
        assert total(cutover_backend.counts(), JobState.FINISHED) == 40

    # -- departures (what verify reads once a job is gone) -----------------------------------
    def test_departures_tell_a_finished_job_from_a_removed_waiting_one(
            self, cutover_backend: QueueBackend) -> None:
        done, waiting = make("add", 1, 2), make("add", 3, 4)
        cutover_backend.put([done, waiting])
        claimed = cutover_backend.claim(None, "w", lambda r: None if r.id == done.id else "no")
        assert claimed is not None and claimed.id == done.id
        cutover_backend.complete(claimed, "w", 3)
        assert cutover_backend.departures([done.id, waiting.id]) == {}  # both still here
        cutover_backend.remove([done.id, waiting.id])
        gone = cutover_backend.departures([done.id, waiting.id, "never-here"])
        assert gone[done.id].finished and gone[done.id].status == "succeeded"
        assert not (waiting.id in gone and gone[waiting.id].finished)
        assert "never-here" not in gone  # absence is never evidence
        # Put again, the job starts a new stay: the earlier end no longer speaks for it.
        cutover_backend.put([done])
        cutover_backend.remove([done.id])
        assert not (done.id in cutover_backend.departures([done.id])
                    and cutover_backend.departures([done.id])[done.id].finished)

    def test_departures_record_a_job_that_failed_for_good(self, cutover_backend: QueueBackend
                                                         ) -> None:
        record = make("boom").replace(max_attempts=1)
        cutover_backend.put([record])
        run_burst(cutover_backend)
        cutover_backend.remove([record.id])
        gone = cutover_backend.departures([record.id])
        assert gone[record.id].finished and gone[record.id].status == "failed"
