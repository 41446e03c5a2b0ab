"""Per-backend metrics of one process, as plain data that merges across a fleet.

A :class:`Metrics` object counts what the Router and the cutover worker of this process did, per
backend name (``rq``, ``procrastinate``, ...): enqueue latency (a histogram), enqueue errors, jobs
claimed and still running (in flight), jobs succeeded / failed / retried, duplicates the fence
skipped and the shadow dry runs (matched / total, the consistency rate).

Why our own counting instead of prometheus_client's ``Histogram``/``Counter`` objects: an
observation here is one ``bisect`` and two additions under one lock (~1 us; see
benchmarks/metrics_bench.py), and the state is plain lists and ints, so :meth:`Metrics.snapshot`
is a JSON-able dict that a member stores with its fleet heartbeat and :func:`merge` adds up
exactly (counters and bucket counts sum; in-flight sums). prometheus_client renders the
exposition (:func:`exposition`, the worker's ``/metrics``) from a snapshot through a custom
collector, so one process and the merged fleet print the same families.

Percentiles are estimated from the histogram's buckets by linear interpolation inside the
bucket that holds the rank, as Prometheus' ``histogram_quantile`` does: bucket counts merge
exactly across members, where per-process reservoirs of samples would not (a merged reservoir
is no sample of the fleet's latencies). The error is bounded by the bucket's width; the bounds
below step 1-1.5-2-3-5-7 per decade from 100 us to 10 s.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

#: Upper bounds (seconds, inclusive: Prometheus' ``le``) of the enqueue-latency buckets; one
#: more bucket, +Inf, holds everything slower.
BUCKETS: Final[tuple[float, ...]] = (
    *(round(m * 10.0 ** e, 6) for e in range(-4, 1) for m in (1, 1.5, 2, 3, 5, 7)), 10.0)

#: The counters a backend has, in snapshot order.
COUNTERS: Final[tuple[str, ...]] = (
    "enqueued", "enqueue_errors", "succeeded", "failed", "retried", "duplicates_skipped",
    "shadow_matched", "shadow_total")

SNAPSHOT_VERSION: Final = 1

Outcome = Literal["succeeded", "failed", "retried"]


class _Backend:
    """One backend's numbers (mutated only under :attr:`Metrics._lock`). Counters are slots,
    not a dict: one attribute add is the cheapest increment Python has."""

    __slots__ = ("buckets", "in_flight", "latency_sum", *COUNTERS)

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.in_flight = 0
        self.enqueued = self.enqueue_errors = self.succeeded = self.failed = 0
        self.retried = self.duplicates_skipped = self.shadow_matched = self.shadow_total = 0

    def numbers(self) -> dict[str, Any]:
        return {"latency_buckets": list(self.buckets), "latency_sum": self.latency_sum,
                "in_flight": self.in_flight, **{key: getattr(self, key) for key in COUNTERS}}


_bisect = bisect.bisect_left


class Metrics:
    """Thread-safe, process-local metrics per backend. Cheap enough for every enqueue.

    The Router calls :meth:`enqueued` / :meth:`enqueue_failed`; the worker calls
    :meth:`claimed`, :meth:`outcome` and :meth:`released`; the fence calls
    :meth:`duplicate_skipped` and the shadow dry runs :meth:`shadow_result`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backends: dict[str, _Backend] = {}

    def _get(self, backend: str) -> _Backend:
        # A dict read is atomic under the GIL; only a backend seen for the first time takes
        # the lock to add its state (setdefault: two first threads end up with one state).
        state = self._backends.get(backend)
        if state is None:
            with self._lock:
                state = self._backends.setdefault(backend, _Backend())
        return state

    # -- producer side ----------------------------------------------------------------------
    def enqueued(self, backend: str, seconds: float, jobs: int = 1) -> None:
        """One enqueue call to ``backend`` took ``seconds`` and sent ``jobs`` job(s)."""
        index = _bisect(BUCKETS, seconds)
        state = self._backends.get(backend) or self._get(backend)
        with self._lock:
            state.buckets[index] += 1
            state.latency_sum += seconds
            state.enqueued += jobs

    def enqueue_failed(self, backend: str) -> None:
        """An enqueue call to ``backend`` raised."""
        state = self._get(backend)
        with self._lock:
            state.enqueue_errors += 1

    # -- worker side ------------------------------------------------------------------------
    def claimed(self, backend: str) -> None:
        """A worker claimed a job of ``backend``: one more in flight."""
        state = self._get(backend)
        with self._lock:
            state.in_flight += 1

    def released(self, backend: str) -> None:
        """A claimed job of ``backend`` left the worker (whatever its outcome): one less in
        flight."""
        state = self._get(backend)
        with self._lock:
            state.in_flight -= 1

    def outcome(self, backend: str, kind: Outcome) -> None:
        """A worker recorded a job's outcome: ``succeeded``, ``failed`` (for good) or
        ``retried`` (an attempt failed, another is scheduled)."""
        state = self._get(backend)
        with self._lock:
            setattr(state, kind, getattr(state, kind) + 1)

    def duplicate_skipped(self, backend: str) -> None:
        """The fence acknowledged a job of ``backend`` as the duplicate of a copy that ran."""
        state = self._get(backend)
        with self._lock:
            state.duplicates_skipped += 1

    def shadow_result(self, backend: str, matched: bool) -> None:
        """A shadow dry run on ``backend`` compared its copy with the source's."""
        state = self._get(backend)
        with self._lock:
            state.shadow_total += 1
            if matched:
                state.shadow_matched += 1

    # -- reading ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy: ``{"version", "buckets", "backends": {name: {...}}}``."""
        with self._lock:
            backends = {name: state.numbers() for name, state in list(self._backends.items())}
        return {"version": SNAPSHOT_VERSION, "buckets": list(BUCKETS), "backends": backends}


#: The metrics of this process (the Router and the worker count here unless given another).
METRICS: Final = Metrics()


def empty() -> dict[str, Any]:
    """The snapshot of a process that counted nothing."""
    return {"version": SNAPSHOT_VERSION, "buckets": list(BUCKETS), "backends": {}}


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The fleet-wide view: counters and latency buckets add up, in-flight gauges add up.

    A snapshot with other bucket bounds (another version of the code) cannot be added
    bucket-wise: it raises ValueError rather than print wrong percentiles.
    """
    total = empty()
    out: dict[str, dict[str, Any]] = total["backends"]
    for snap in snapshots:
        if list(snap.get("buckets", ())) != total["buckets"]:
            raise ValueError("metrics snapshot with other latency buckets (version "
                             f"{snap.get('version')!r}): cannot merge")
        for name, numbers in snap.get("backends", {}).items():
            acc = out.get(name)
            if acc is None:
                acc = out[name] = {"latency_buckets": [0] * (len(BUCKETS) + 1),
                                   "latency_sum": 0.0, "in_flight": 0,
                                   **dict.fromkeys(COUNTERS, 0)}
            acc["latency_buckets"] = [a + b for a, b in
                                      zip(acc["latency_buckets"], numbers["latency_buckets"],
                                          strict=True)]
            acc["latency_sum"] += numbers["latency_sum"]
            acc["in_flight"] += numbers["in_flight"]
            for key in COUNTERS:
                acc[key] += int(numbers.get(key, 0))
    return total


def quantile(q: float, counts: list[int], bounds: tuple[float, ...] = BUCKETS) -> float | None:
    """Estimate the ``q`` quantile (0..1) from per-bucket counts (the last bucket is +Inf).

    Linear interpolation inside the bucket holding the rank, from the bucket's lower bound (0
    for the first); a rank in +Inf answers the highest finite bound (as ``histogram_quantile``
    does). None when nothing was observed.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * ((rank - seen) / count)
        seen += count
    return bounds[-1]


def summary(snapshot: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per backend: p50/p99 enqueue latency (seconds), errors, consistency rate (None before
    any dry run), duplicates skipped, in flight, succeeded/failed/retried."""
    out: dict[str, dict[str, Any]] = {}
    for name, n in sorted(snapshot.get("backends", {}).items()):
        counts = list(n["latency_buckets"])
        out[name] = {
            "enqueue_p50": quantile(0.5, counts), "enqueue_p99": quantile(0.99, counts),
            "enqueued": n["enqueued"], "enqueue_errors": n["enqueue_errors"],
            "consistency_rate": (n["shadow_matched"] / n["shadow_total"]
                                 if n["shadow_total"] else None),
            "shadow_total": n["shadow_total"], "duplicates_skipped": n["duplicates_skipped"],
            "in_flight": n["in_flight"], "succeeded": n["succeeded"], "failed": n["failed"],
            "retried": n["retried"]}
    return out


# -- Prometheus exposition ------------------------------------------------------------------

#: Counter family names that differ from the snapshot key (a counter's samples end in _total:
#: "shadow_total" would read "cutover_shadow_total_total").
PROM_NAMES: Final = {"shadow_total": "cutover_shadow_runs"}


class SnapshotCollector(Collector):
    """Renders a snapshot (or a live :class:`Metrics`, read at each scrape) as Prometheus
    families ``cutover_*`` with a ``backend`` label."""

    def __init__(self, source: Metrics | Mapping[str, Any]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source.snapshot() if isinstance(self.source, Metrics) else self.source
        backends = sorted(snap.get("backends", {}).items())
        latency = HistogramMetricFamily(
            "cutover_enqueue_latency_seconds", "Router enqueue call latency per backend",
            labels=["backend"])
        for name, n in backends:
            cumulative, buckets = 0, []
            for bound, count in zip((*BUCKETS, math.inf), n["latency_buckets"], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)),
                                cumulative))
            latency.add_metric([name], buckets, n["latency_sum"])
        yield latency
        helps = {
            "enqueued": "Jobs the Router enqueued per backend",
            "enqueue_errors": "Router enqueue calls that raised per backend",
            "succeeded": "Jobs the cutover worker ran successfully per backend",
            "failed": "Jobs the cutover worker failed for good per backend",
            "retried": "Job attempts that failed and were scheduled again per backend",
            "duplicates_skipped": "Jobs the fence acknowledged as duplicates per backend",
            "shadow_matched": "Shadow dry runs whose copy matched the source per backend",
            "shadow_total": "Shadow dry runs per backend",
        }
        for key in COUNTERS:
            family = CounterMetricFamily(PROM_NAMES.get(key, f"cutover_{key}"), helps[key],
                                         labels=["backend"])
            for name, n in backends:
                family.add_metric([name], n[key])
            yield family
        in_flight = GaugeMetricFamily("cutover_jobs_in_flight",
                                      "Jobs claimed by cutover workers and not finished",
                                      labels=["backend"])
        for name, n in backends:
            in_flight.add_metric([name], n["in_flight"])
        yield in_flight


def registry_for(source: Metrics | Mapping[str, Any]) -> CollectorRegistry:
    """A prometheus_client registry holding only the cutover families of ``source``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    return registry


def exposition(source: Metrics | Mapping[str, Any]) -> str:
    """The Prometheus text exposition of a live :class:`Metrics` or of a snapshot."""
    return generate_latest(registry_for(source)).decode()


def serve(port: int, host: str = "127.0.0.1", metrics: Metrics = METRICS) -> WSGIServer:
    """Serve ``metrics`` as Prometheus text at ``http://host:port/metrics`` from a daemon
    thread (prometheus_client's server; port 0 picks a free one, read ``server_port``);
    return the server (``.shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=host, registry=registry_for(metrics))
    return server
