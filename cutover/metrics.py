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
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

if TYPE_CHECKING:  # prometheus_client is imported when an exposition is made (start-up time)
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

_log = logging.getLogger("cutover.metrics")

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

#: Upper bounds (seconds) of the job-duration buckets (claim to release, per backend, queue,
#: task and outcome): 5 ms to an hour, then +Inf.
JOB_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0)

#: The ``outcome`` label of a job's duration: what the worker recorded while it held the job
#: (``other``: none of these, e.g. the backend failed under it).
JOB_OUTCOMES: Final[tuple[str, ...]] = (
    "succeeded", "failed", "retried", "duplicate", "shadow", "other")

#: At most this many (backend, queue, task, outcome) series per process; past it, new ones are
#: counted under queue and task ``_other`` (labels are queue and task names only, never job
#: ids: bounded by the registry, and this bounds it again).
MAX_JOB_SERIES: Final = 2000
OTHER: Final = "_other"

#: How often the jobs per queue and state (:meth:`Metrics.track_counts`) are read again: at most
#: once per interval, when a snapshot is taken (a scrape or a heartbeat), never per job.
COUNTS_EVERY: Final = 5.0


class _Counted(Protocol):
    """What :meth:`Metrics.track_counts` reads: a backend's jobs per queue and state."""

    @property
    def name(self) -> str: ...

    def counts(self) -> Mapping[str, Mapping[Any, int]]: ...


class _JobRef(Protocol):
    """What the duration of a job is labelled by (a :class:`~cutover.record.JobRecord`)."""

    @property
    def queue(self) -> str: ...

    @property
    def task(self) -> str: ...


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


class _Held:
    """The job a worker thread holds: its labels, since when, and what became of it."""

    __slots__ = ("backend", "outcome", "queue", "started", "task")

    def __init__(self, backend: str, queue: str, task: str) -> None:
        self.backend, self.queue, self.task = backend, queue, task
        self.started = time.perf_counter()
        self.outcome = "other"


class Metrics:
    """Thread-safe, process-local metrics per backend. Cheap enough for every enqueue.

    The Router calls :meth:`enqueued` / :meth:`enqueue_failed`; the worker calls
    :meth:`claimed`, :meth:`outcome` and :meth:`released`; the fence calls
    :meth:`duplicate_skipped` and the shadow dry runs :meth:`shadow_result`. A job given to
    :meth:`claimed` is timed until :meth:`released` in the same thread (the job-duration
    histogram, labelled by backend, queue, task and outcome). What is not counted per call is
    read when a snapshot is taken: the jobs per queue and state (:meth:`track_counts`), the phase
    (:meth:`set_phase`, on each fleet heartbeat).

    Each object has an :attr:`instance` id, and the fleet members that heartbeat its snapshot
    are listed in :attr:`members`: ``cutover status`` counts one process once however many ways
    its numbers reach it (a heartbeat per member, a ``/metrics`` scrape).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backends: dict[str, _Backend] = {}
        #: This object's id in every snapshot and exposition (one source of truth per process).
        self.instance = uuid.uuid4().hex
        #: The fleet member ids whose heartbeats carry this object's snapshot.
        self.members: set[str] = set()
        self._local = threading.local()
        self._jobs: dict[tuple[str, str, str, str], list[float]] = {}
        self._phase: dict[str, Any] | None = None
        self._tracked: dict[str, _Counted] = {}
        self._counts: dict[str, dict[str, Any]] = {}
        self._counts_read = 0.0
        self._counts_lock = threading.Lock()
        self.counts_every = COUNTS_EVERY

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
    def claimed(self, backend: str, job: _JobRef | None = None) -> None:
        """A worker claimed a job of ``backend``: one more in flight. With ``job``, this thread
        times it until :meth:`released` (labelled by its queue and task)."""
        state = self._get(backend)
        with self._lock:
            state.in_flight += 1
        if job is not None:
            self._local.held = _Held(backend, job.queue, job.task)

    def released(self, backend: str) -> None:
        """A claimed job of ``backend`` left the worker (whatever its outcome): one less in
        flight; its duration observed when :meth:`claimed` was given the job."""
        state = self._get(backend)
        held: _Held | None = getattr(self._local, "held", None)
        self._local.held = None
        with self._lock:
            state.in_flight -= 1
            if held is not None and held.backend == backend:
                self._observe_job(held, time.perf_counter() - held.started)

    def _observe_job(self, held: _Held, seconds: float) -> None:
        """Under the lock: one job's duration into its series (bounded: see MAX_JOB_SERIES)."""
        key = (held.backend, held.queue, held.task, held.outcome)
        series = self._jobs.get(key)
        if series is None:
            if len(self._jobs) >= MAX_JOB_SERIES:
                key = (held.backend, OTHER, OTHER, held.outcome)
                series = self._jobs.get(key)
            if series is None:
                series = self._jobs[key] = [0.0] * (len(JOB_BUCKETS) + 2)  # buckets, sum
        series[_bisect(JOB_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def _mark(self, outcome: str) -> None:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            held.outcome = outcome

    def outcome(self, backend: str, kind: Outcome) -> None:
        """A worker recorded a job's outcome: ``succeeded``, ``failed`` (for good) or
        ``retried`` (an attempt failed, another is scheduled)."""
        state = self._get(backend)
        with self._lock:
            setattr(state, kind, getattr(state, kind) + 1)
        self._mark(kind)

    def duplicate_skipped(self, backend: str) -> None:
        """The fence acknowledged a job of ``backend`` as the duplicate of a copy that ran."""
        state = self._get(backend)
        with self._lock:
            state.duplicates_skipped += 1
        self._mark("duplicate")

    def shadow_result(self, backend: str, matched: bool) -> None:
        """A shadow dry run on ``backend`` compared its copy with the source's."""
        state = self._get(backend)
        with self._lock:
            state.shadow_total += 1
            if matched:
                state.shadow_matched += 1
        self._mark("shadow")

    # -- read when a snapshot is taken ------------------------------------------------------
    def track_counts(self, backend: _Counted) -> None:
        """Report ``backend``'s jobs per queue and state (waiting, active, failed, ...) in
        every snapshot, read at most every :attr:`counts_every` seconds when a snapshot is
        taken (a scrape, a heartbeat): never a round trip per job."""
        with self._counts_lock:
            self._tracked[backend.name] = backend
            self._counts_read = 0.0

    def set_phase(self, phase: str, epoch: int) -> None:
        """The staged cut-over's phase and epoch as this process last read them."""
        self._phase = {"phase": phase, "epoch": int(epoch), "at": time.time()}

    def _read_counts(self) -> dict[str, dict[str, Any]]:
        """The tracked backends' jobs per queue and state, read again when older than
        :attr:`counts_every` (one reader at a time; a failed read keeps the last one)."""
        if not self._tracked:
            return {}
        now = time.monotonic()
        if now - self._counts_read >= self.counts_every and self._counts_lock.acquire(False):
            try:
                from cutover.record import SUMMARY_STATES

                for name, backend in list(self._tracked.items()):
                    try:
                        per_queue = backend.counts()
                    except Exception as exc:  # a gauge must not break a heartbeat or a scrape
                        _log.debug("reading the jobs per queue of %s failed: %s", name, exc)
                        continue
                    self._counts[name] = {"at": time.time(), "counts": {
                        queue: {label: sum(int(per.get(s, 0)) for s in states)
                                for label, states in SUMMARY_STATES.items()}
                        for queue, per in sorted(per_queue.items())}}
                self._counts_read = time.monotonic()
            finally:
                self._counts_lock.release()
        return dict(self._counts)

    # -- reading ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy: ``{"version", "buckets", "backends": {name: {...}}, "instance",
        "members", "at", "job_buckets", "jobs": [{backend, queue, task, outcome, buckets,
        sum}], "queues": {backend: {"at", "counts": {queue: {state: n}}}}, "phase"}``."""
        queues = self._read_counts()
        with self._lock:
            backends = {name: state.numbers() for name, state in list(self._backends.items())}
            jobs = [{"backend": k[0], "queue": k[1], "task": k[2], "outcome": k[3],
                     "buckets": [int(n) for n in v[:-1]], "sum": v[-1]}
                    for k, v in sorted(self._jobs.items())]
        snap = {"version": SNAPSHOT_VERSION, "buckets": list(BUCKETS), "backends": backends,
                "instance": self.instance, "members": sorted(self.members), "at": time.time(),
                "job_buckets": list(JOB_BUCKETS), "jobs": jobs, "queues": queues}
        if self._phase is not None:
            snap["phase"] = dict(self._phase)
        return snap


#: The metrics of this process (the Router and the worker count here unless given another).
METRICS: Final = Metrics()


def empty() -> dict[str, Any]:
    """The snapshot of a process that counted nothing."""
    return {"version": SNAPSHOT_VERSION, "buckets": list(BUCKETS), "backends": {},
            "job_buckets": list(JOB_BUCKETS), "jobs": [], "queues": {}}


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The fleet-wide view: counters, latency and job-duration buckets add up, in-flight gauges
    add up; the jobs per queue and state and the phase are the freshest report of each (they
    are the store's and the plane's, not a process's: two workers of one store report it
    twice).

    A snapshot with other bucket bounds (another version of the code) cannot be added
    bucket-wise: it raises ValueError rather than print wrong percentiles. Give each process's
    snapshot once (:func:`cutover.fleet_metrics.gather` does).
    """
    total = empty()
    out: dict[str, dict[str, Any]] = total["backends"]
    jobs: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    queues: dict[str, dict[str, Any]] = total["queues"]
    for snap in snapshots:
        if list(snap.get("buckets", ())) != total["buckets"]:
            raise ValueError("metrics snapshot with other latency buckets (version "
                             f"{snap.get('version')!r}): cannot merge")
        if snap.get("jobs") and list(snap.get("job_buckets", ())) != total["job_buckets"]:
            raise ValueError("metrics snapshot with other job-duration buckets (version "
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
        for series in snap.get("jobs", ()):
            skey = (str(series["backend"]), str(series["queue"]), str(series["task"]),
                    str(series["outcome"]))
            found = jobs.get(skey)
            if found is None:
                found = jobs[skey] = {"backend": skey[0], "queue": skey[1], "task": skey[2],
                                      "outcome": skey[3],
                                      "buckets": [0] * (len(JOB_BUCKETS) + 1), "sum": 0.0}
            found["buckets"] = [a + int(b) for a, b in zip(found["buckets"], series["buckets"],
                                                          strict=True)]
            found["sum"] += float(series["sum"])
        for name, report in snap.get("queues", {}).items():
            if name not in queues or report["at"] > queues[name]["at"]:
                queues[name] = report
        phase = snap.get("phase")
        if phase and ("phase" not in total or phase["at"] > total["phase"]["at"]):
            total["phase"] = phase
    total["jobs"] = [jobs[k] for k in sorted(jobs)]
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
    any dry run), duplicates skipped, in flight, succeeded/failed/retried, and p50/p99 of the
    jobs' durations (every queue, task and outcome)."""
    durations: dict[str, list[int]] = {}
    for series in snapshot.get("jobs", ()):
        acc = durations.setdefault(series["backend"], [0] * (len(JOB_BUCKETS) + 1))
        for i, n in enumerate(series["buckets"]):
            acc[i] += int(n)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(snapshot.get("backends", {})) | set(durations)):
        n = snapshot.get("backends", {}).get(name) or {
            "latency_buckets": [0] * (len(BUCKETS) + 1), "in_flight": 0,
            **dict.fromkeys(COUNTERS, 0)}
        counts = list(n["latency_buckets"])
        jobs = durations.get(name, [0] * (len(JOB_BUCKETS) + 1))
        out[name] = {
            "enqueue_p50": quantile(0.5, counts), "enqueue_p99": quantile(0.99, counts),
            "enqueued": n["enqueued"], "enqueue_errors": n["enqueue_errors"],
            "consistency_rate": (n["shadow_matched"] / n["shadow_total"]
                                 if n["shadow_total"] else None),
            "shadow_total": n["shadow_total"], "duplicates_skipped": n["duplicates_skipped"],
            "in_flight": n["in_flight"], "succeeded": n["succeeded"], "failed": n["failed"],
            "retried": n["retried"], "jobs_timed": sum(jobs),
            "job_p50": quantile(0.5, jobs, JOB_BUCKETS),
            "job_p99": quantile(0.99, jobs, JOB_BUCKETS)}
    return out


# -- Prometheus exposition ------------------------------------------------------------------

#: Counter family names that differ from the snapshot key (a counter's samples end in _total:
#: "shadow_total" would read "cutover_shadow_total_total").
PROM_NAMES: Final = {"shadow_total": "cutover_shadow_runs"}

#: The other families' names (read back by :func:`cutover.fleet_metrics.from_exposition`).
LATENCY: Final = "cutover_enqueue_latency_seconds"
IN_FLIGHT: Final = "cutover_jobs_in_flight"
JOB_DURATION: Final = "cutover_job_duration_seconds"
QUEUE_JOBS: Final = "cutover_queue_jobs"
PHASE: Final = "cutover_phase"
EPOCH: Final = "cutover_epoch"
INSTANCE: Final = "cutover_process_info"
MEMBER: Final = "cutover_fleet_member_info"

_HELPS: Final = {
    "enqueued": "Jobs the Router enqueued per backend",
    "enqueue_errors": "Router enqueue calls that raised per backend",
    "succeeded": "Jobs the cutover worker ran successfully per backend",
    "failed": "Jobs the cutover worker failed for good per backend",
    "retried": "Job attempts that failed and were scheduled again per backend",
    "duplicates_skipped": "Jobs the fence acknowledged as duplicates per backend",
    "shadow_matched": "Shadow dry runs whose copy matched the source per backend",
    "shadow_total": "Shadow dry runs per backend",
}


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


def _cumulative(bounds: tuple[float, ...], counts: Iterable[float]) -> list[tuple[str, float]]:
    out, running = [], 0.0
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        running += count
        out.append((_le(bound), running))
    return out


class SnapshotCollector:
    """Renders a snapshot (or a live :class:`Metrics`, read at each scrape) as Prometheus
    families ``cutover_*``: per ``backend`` the enqueue latency, the counters and the jobs in
    flight; per backend, queue, task and outcome the jobs' durations; per backend, queue and
    state the jobs in the store; the phase and epoch; and, for one process, its instance id and
    the fleet members it heartbeats as (what lets ``status`` count it once)."""

    def __init__(self, source: Metrics | Mapping[str, Any]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snap = self.source.snapshot() if isinstance(self.source, Metrics) else self.source
        backends = sorted(snap.get("backends", {}).items())
        latency = HistogramMetricFamily(LATENCY, "Router enqueue call latency per backend",
                                        labels=["backend"])
        for name, n in backends:
            latency.add_metric([name], _cumulative(BUCKETS, n["latency_buckets"]),
                               n["latency_sum"])
        yield latency
        for key in COUNTERS:
            family = CounterMetricFamily(PROM_NAMES.get(key, f"cutover_{key}"), _HELPS[key],
                                         labels=["backend"])
            for name, n in backends:
                family.add_metric([name], n[key])
            yield family
        in_flight = GaugeMetricFamily(IN_FLIGHT,
                                      "Jobs claimed by cutover workers and not finished",
                                      labels=["backend"])
        for name, n in backends:
            in_flight.add_metric([name], n["in_flight"])
        yield in_flight
        duration = HistogramMetricFamily(
            JOB_DURATION, "Seconds a cutover worker held a job (claim to release) per backend, "
            "queue, task and outcome", labels=["backend", "queue", "task", "outcome"])
        for series in snap.get("jobs", ()):
            duration.add_metric([series["backend"], series["queue"], series["task"],
                                 series["outcome"]],
                                _cumulative(JOB_BUCKETS, series["buckets"]), series["sum"])
        yield duration
        queue_jobs = GaugeMetricFamily(
            QUEUE_JOBS, "Jobs in the store per backend, queue and state (waiting, scheduled, "
            "deferred, held, active, completed, failed, canceled)",
            labels=["backend", "queue", "state"])
        for name, report in sorted(snap.get("queues", {}).items()):
            for queue, per in report["counts"].items():
                for state, count in per.items():
                    queue_jobs.add_metric([name, queue, state], count)
        yield queue_jobs
        phase = snap.get("phase")
        if phase:
            from cutover.phases import Phase

            phases = GaugeMetricFamily(PHASE, "The staged cut-over's phase (1: the current one)",
                                       labels=["phase"])
            for p in Phase:
                phases.add_metric([p.value], 1.0 if p.value == phase["phase"] else 0.0)
            yield phases
            yield GaugeMetricFamily(EPOCH, "The staged cut-over's epoch (each phase change adds "
                                    "one)", value=phase["epoch"])
        if snap.get("instance"):  # one process's: its id, and the members it heartbeats as
            # (label metrics_instance: Prometheus owns "instance", the scraped target's)
            instance = GaugeMetricFamily(INSTANCE, "This process's metrics instance id (status "
                                         "counts each once)", labels=["metrics_instance"])
            instance.add_metric([snap["instance"]], 1.0)
            yield instance
            members = GaugeMetricFamily(MEMBER, "The fleet member ids whose heartbeats carry "
                                        "this process's metrics", labels=["member"])
            for member in snap.get("members", ()):
                members.add_metric([member], 1.0)
            yield members


def registry_for(source: Metrics | Mapping[str, Any], *, process: bool = False
                 ) -> CollectorRegistry:
    """A prometheus_client registry holding the cutover families of ``source``; with
    ``process``, prometheus_client's process, platform (Python) and gc collectors too."""
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def exposition(source: Metrics | Mapping[str, Any]) -> str:
    """The Prometheus text exposition of a live :class:`Metrics` or of a snapshot."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(source)).decode()


def serve(port: int, host: str = "127.0.0.1", metrics: Metrics = METRICS) -> WSGIServer:
    """Serve ``metrics`` as Prometheus text at ``http://host:port/metrics`` from a daemon
    thread (prometheus_client's server; port 0 picks a free one, read ``server_port``), with
    the process and Python collectors; return the server (``.shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host,
                                        registry=registry_for(metrics, process=True))
    return server
