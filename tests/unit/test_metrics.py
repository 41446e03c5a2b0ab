"""The metrics math: bucket placement, percentiles from known observations, merge, exposition."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cutover import metrics as m


def test_observation_lands_in_the_bucket_whose_bound_is_at_or_above_it() -> None:
    x = m.Metrics()
    x.enqueued("rq", 0.0001)        # exactly a bound: le="0.0001" (inclusive)
    x.enqueued("rq", 0.00010001)    # just above: next bucket
    x.enqueued("rq", 99.0)          # past 10 s: +Inf
    counts = x.snapshot()["backends"]["rq"]["latency_buckets"]
    assert counts[0] == 1
    assert counts[1] == 1
    assert counts[-1] == 1
    assert sum(counts) == 3


def test_percentiles_from_known_observations() -> None:
    x = m.Metrics()
    # 98 fast calls in (0.0002, 0.0003], 2 slow ones in (0.5, 0.7].
    for _ in range(98):
        x.enqueued("procrastinate", 0.00025)
    for _ in range(2):
        x.enqueued("procrastinate", 0.6)
    s = m.summary(x.snapshot())["procrastinate"]
    # rank 50 of 98 in (0.0002, 0.0003]: 0.0002 + 0.0001 * 50/98
    assert s["enqueue_p50"] == pytest.approx(0.0002 + 0.0001 * 50 / 98)
    # rank 99: the first of the two slow ones, half-way into (0.5, 0.7]
    assert s["enqueue_p99"] == pytest.approx(0.6)
    assert s["enqueued"] == 100


def test_quantile_edges() -> None:
    assert m.quantile(0.5, [0] * (len(m.BUCKETS) + 1)) is None
    only_inf = [0] * len(m.BUCKETS) + [5]
    assert m.quantile(0.99, only_inf) == m.BUCKETS[-1]
    first = [4] + [0] * len(m.BUCKETS)
    assert m.quantile(0.5, first) == pytest.approx(m.BUCKETS[0] / 2)


def test_counters_gauges_and_consistency_rate() -> None:
    x = m.Metrics()
    x.claimed("rq")
    x.claimed("rq")
    x.outcome("rq", "succeeded")
    x.released("rq")
    x.outcome("rq", "retried")
    x.enqueue_failed("rq")
    x.duplicate_skipped("rq")
    for matched in (True, True, True, False):
        x.shadow_result("procrastinate", matched)
    s = m.summary(x.snapshot())
    assert s["rq"]["in_flight"] == 1
    assert (s["rq"]["succeeded"], s["rq"]["retried"], s["rq"]["failed"]) == (1, 1, 0)
    assert s["rq"]["enqueue_errors"] == 1
    assert s["rq"]["duplicates_skipped"] == 1
    assert s["rq"]["consistency_rate"] is None
    assert s["procrastinate"]["consistency_rate"] == pytest.approx(0.75)
    assert s["procrastinate"]["shadow_total"] == 4


def test_merge_adds_counters_buckets_and_in_flight() -> None:
    a, b = m.Metrics(), m.Metrics()
    a.enqueued("rq", 0.001)
    a.claimed("rq")
    a.outcome("rq", "failed")
    b.enqueued("rq", 0.001)
    b.enqueued("rq", 2.5)
    b.claimed("rq")
    b.claimed("procrastinate")
    b.shadow_result("procrastinate", False)
    # Snapshots travel as JSON (the fleet table): merge what came back.
    snaps = [json.loads(json.dumps(a.snapshot())), json.loads(json.dumps(b.snapshot()))]
    merged = m.merge(snaps)
    rq = merged["backends"]["rq"]
    assert rq["latency_buckets"][m.BUCKETS.index(0.001)] == 2
    assert rq["latency_buckets"][m.BUCKETS.index(3.0)] == 1
    assert rq["latency_sum"] == pytest.approx(2.502)
    assert rq["enqueued"] == 3
    assert rq["failed"] == 1
    assert rq["in_flight"] == 2
    assert merged["backends"]["procrastinate"]["shadow_total"] == 1
    assert merged["backends"]["procrastinate"]["shadow_matched"] == 0
    # Merging one snapshot gives its numbers back (the merge is no one process: no instance,
    # members or time); merging nothing is empty.
    assert m.merge([a.snapshot()]) == numbers_of(a.snapshot())
    assert m.merge([]) == m.empty()


def numbers_of(snap: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snap.items() if k not in ("instance", "members", "at")}


def test_merge_refuses_other_buckets() -> None:
    other = {**m.empty(), "buckets": [0.5, 1.0]}
    with pytest.raises(ValueError, match="other latency buckets"):
        m.merge([other])


def test_concurrent_observations_are_all_counted() -> None:
    x = m.Metrics()

    def work() -> None:
        for _ in range(5000):
            x.enqueued("rq", 0.002)
            x.claimed("rq")
            x.released("rq")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = x.snapshot()["backends"]["rq"]
    assert sum(s["latency_buckets"]) == 20000
    assert s["enqueued"] == 20000
    assert s["in_flight"] == 0


def test_exposition_parses_and_carries_the_numbers() -> None:
    x = m.Metrics()
    x.enqueued("rq", 0.0004)
    x.enqueued("rq", 0.02)
    x.outcome("rq", "succeeded")
    x.outcome("rq", "succeeded")
    x.claimed("procrastinate")
    x.shadow_result("procrastinate", True)
    text = m.exposition(x)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("cutover_succeeded_total", (("backend", "rq"),))] == 2
    assert samples[("cutover_jobs_in_flight", (("backend", "procrastinate"),))] == 1
    assert samples[("cutover_shadow_runs_total", (("backend", "procrastinate"),))] == 1
    assert samples[("cutover_enqueue_latency_seconds_count", (("backend", "rq"),))] == 2
    assert samples[("cutover_enqueue_latency_seconds_bucket",
                    (("backend", "rq"), ("le", "0.0005")))] == 1
    assert samples[("cutover_enqueue_latency_seconds_bucket",
                    (("backend", "rq"), ("le", "+Inf")))] == 2
    assert families["cutover_enqueue_latency_seconds"].type == "histogram"
    # A snapshot renders the same text as the live object it came from.
    assert m.exposition(x.snapshot()) == text


def test_exposition_reads_back_into_the_same_snapshot() -> None:
    from cutover.fleet_metrics import from_exposition

    x = m.Metrics()
    x.enqueued("rq", 0.003)
    x.enqueued("rq", 30.0)  # +Inf bucket
    x.outcome("rq", "failed")
    x.claimed("procrastinate")
    x.duplicate_skipped("procrastinate")
    x.shadow_result("procrastinate", True)
    snap = x.snapshot()
    back = from_exposition(m.exposition(snap))
    assert back.pop("at") >= snap.pop("at")  # the time it was read
    assert back == snap
    assert from_exposition("# nothing of ours\nother_total 3\n") == m.empty()


class _Job:
    def __init__(self, queue: str, task: str) -> None:
        self.queue, self.task = queue, task


class _Store:
    name = "rq"

    def __init__(self) -> None:
        self.reads = 0

    def counts(self) -> dict[str, dict[Any, int]]:
        from cutover.record import JobState

        self.reads += 1
        return {"default": {JobState.QUEUED: 3, JobState.FAILED: 2, JobState.STARTED: 1}}


def test_job_durations_per_queue_task_and_outcome() -> None:
    x = m.Metrics()
    x.claimed("rq", _Job("default", "app.send"))
    x.outcome("rq", "succeeded")
    x.released("rq")
    x.claimed("rq", _Job("default", "app.send"))
    x.duplicate_skipped("rq")
    x.released("rq")
    x.claimed("rq", _Job("mail", "app.send"))  # nothing recorded: "other"
    x.released("rq")
    x.claimed("rq")  # no job given: in flight only, not timed
    x.released("rq")
    jobs = {(s["queue"], s["outcome"]): sum(s["buckets"]) for s in x.snapshot()["jobs"]}
    assert jobs == {("default", "succeeded"): 1, ("default", "duplicate"): 1,
                    ("mail", "other"): 1}
    assert m.summary(x.snapshot())["rq"]["jobs_timed"] == 3


def test_job_series_are_bounded() -> None:
    x = m.Metrics()
    for i in range(m.MAX_JOB_SERIES + 50):
        x.claimed("rq", _Job("q", f"task-{i}"))
        x.outcome("rq", "succeeded")
        x.released("rq")
    series = x.snapshot()["jobs"]
    assert len(series) == m.MAX_JOB_SERIES + 1
    other = [s for s in series if s["task"] == m.OTHER]
    assert sum(other[0]["buckets"]) == 50


def test_counts_are_read_when_a_snapshot_is_taken_at_most_every_interval() -> None:
    x = m.Metrics()
    store = _Store()
    x.track_counts(store)
    for _ in range(20):  # a hot loop of scrapes: one read
        snap = x.snapshot()
    assert store.reads == 1
    assert snap["queues"]["rq"]["counts"]["default"]["waiting"] == 3
    assert snap["queues"]["rq"]["counts"]["default"]["failed"] == 2
    x.counts_every = 0.0
    x.snapshot()
    assert store.reads == 2


def test_new_families_read_back_into_the_same_snapshot() -> None:
    from cutover.fleet_metrics import from_exposition

    x = m.Metrics()
    x.track_counts(_Store())
    x.set_phase("live", 4)
    x.members.add("0b5ad5e2-0000-4000-8000-000000000000")
    x.claimed("rq", _Job("default", "app.send"))
    x.outcome("rq", "failed")
    x.released("rq")
    snap = json.loads(json.dumps(x.snapshot()))
    back = from_exposition(m.exposition(snap))
    for doc in (snap, back):
        doc.pop("at")
        doc["phase"].pop("at")
        doc["queues"]["rq"].pop("at")
    assert back == snap


def test_one_snapshot_per_instance() -> None:
    from cutover.fleet_metrics import once_per_instance

    x, y = m.Metrics(), m.Metrics()
    x.outcome("rq", "succeeded")
    old = x.snapshot()
    x.outcome("rq", "succeeded")
    beat_a, beat_b, scraped = old, x.snapshot(), {**x.snapshot(), "_scraped": True}
    legacy = {k: v for k, v in y.snapshot().items() if k != "instance"}
    # Two members of one process (a Router and a worker) heartbeat one Metrics: the latest.
    kept, dropped = once_per_instance([beat_a, beat_b, legacy], [])
    assert (len(kept), dropped) == (2, 1)
    assert m.merge(kept)["backends"]["rq"]["succeeded"] == 2
    # Scraped too: the scrape, once.
    kept, dropped = once_per_instance([beat_a, beat_b], [scraped])
    assert kept == [scraped] and dropped == 2
