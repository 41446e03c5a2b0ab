"""The fleet-wide metrics view that ``cutover status`` shows: snapshots gathered from the fleet's
heartbeats (control plane) and from workers' ``/metrics`` endpoints, merged
(:func:`cutover.metrics.merge`).

A worker's endpoint speaks Prometheus text; :func:`from_exposition` reads it back into a snapshot
(the exposition carries every bucket, sum and counter, so nothing is lost on the way).

One source of truth per process: every snapshot carries its :class:`~cutover.metrics.Metrics`
instance id (an exposition too, ``cutover_process_info{metrics_instance}``), and :func:`gather`
keeps one snapshot per instance: a worker that heartbeats as a fleet member and is scraped at its
``/metrics`` is counted once (the scrape, the fresher), and so is a process whose Router and
worker are two members heartbeating one :data:`~cutover.metrics.METRICS`.
"""

from __future__ import annotations

import base64
import math
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cutover import metrics as m
from cutover.errors import BackendUnavailableError, ConfigurationError, CutoverError
from cutover.metrics import (
    BUCKETS,
    COUNTERS,
    JOB_BUCKETS,
    METRICS,
    PROM_NAMES,
    Metrics,
    empty,
    merge,
)
from cutover.urls import redact, redact_text, secrets_of

if TYPE_CHECKING:
    import urllib.request

    from cutover.control.fleet import Fleet

_LATENCY = m.LATENCY
_IN_FLIGHT = m.IN_FLIGHT
#: Prometheus family name (without _total) -> snapshot counter key.
_COUNTER_OF = {PROM_NAMES.get(key, f"cutover_{key}"): key for key in COUNTERS}


def from_exposition(text: str) -> dict[str, Any]:
    """A snapshot from the Prometheus text a ``cutover worker --metrics-port`` serves.

    Families that are not cutover's are ignored; latency or duration buckets with other bounds
    (another version of the code) raise ValueError, as :func:`cutover.metrics.merge` does.
    """
    from prometheus_client.parser import text_string_to_metric_families

    snap = empty()
    now = time.time()
    backends: dict[str, dict[str, Any]] = snap["backends"]

    def numbers(name: str) -> dict[str, Any]:
        if name not in backends:
            backends[name] = {"latency_buckets": [0] * (len(BUCKETS) + 1), "latency_sum": 0.0,
                              "in_flight": 0, **dict.fromkeys(COUNTERS, 0)}
        return backends[name]

    cumulative: dict[str, dict[float, float]] = {}
    jobs: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    members: list[str] = []
    phase: str | None = None
    epoch: int | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if family.name == m.JOB_DURATION:
                key = (labels["backend"], labels["queue"], labels["task"], labels["outcome"])
                series = jobs.setdefault(key, {"bounds": {}, "sum": 0.0})
                if sample.name.endswith("_bucket"):
                    series["bounds"][float(labels["le"])] = sample.value
                elif sample.name.endswith("_sum"):
                    series["sum"] = sample.value
            elif family.name == m.QUEUE_JOBS:
                report = snap["queues"].setdefault(labels["backend"], {"at": now, "counts": {}})
                report["counts"].setdefault(labels["queue"], {})[labels["state"]] = int(
                    sample.value)
            elif family.name == m.PHASE:
                if sample.value == 1:
                    phase = labels["phase"]
            elif family.name == m.EPOCH:
                epoch = int(sample.value)
            elif family.name == m.INSTANCE:
                snap["instance"] = labels["metrics_instance"]
            elif family.name == m.MEMBER:
                members.append(labels["member"])
            elif (backend := labels.get("backend")) is None:
                continue
            elif family.name == _LATENCY:
                n = numbers(backend)
                if sample.name.endswith("_bucket"):
                    cumulative.setdefault(backend, {})[float(labels["le"])] = sample.value
                elif sample.name.endswith("_sum"):
                    n["latency_sum"] = sample.value
            elif family.name == _IN_FLIGHT:
                numbers(backend)["in_flight"] = int(sample.value)
            elif family.name in _COUNTER_OF and sample.name.endswith("_total"):
                numbers(backend)[_COUNTER_OF[family.name]] = int(sample.value)
    for backend, by_bound in cumulative.items():
        backends[backend]["latency_buckets"] = _counts(by_bound, BUCKETS, f"backend {backend!r}",
                                                       "latency")
    snap["jobs"] = [{"backend": k[0], "queue": k[1], "task": k[2], "outcome": k[3],
                     "buckets": _counts(v["bounds"], JOB_BUCKETS, f"task {k[2]!r}", "duration"),
                     "sum": v["sum"]} for k, v in sorted(jobs.items())]
    if "instance" in snap:
        snap["members"] = sorted(members)
        snap["at"] = now
    if phase is not None and epoch is not None:
        snap["phase"] = {"phase": phase, "epoch": epoch, "at": now}
    return snap


def _counts(by_bound: Mapping[float, float], expected: tuple[float, ...], what: str,
            kind: str) -> list[int]:
    """Per-bucket counts from cumulative ones (``le`` -> count); other bounds raise."""
    bounds = sorted(by_bound)
    if bounds != [*expected, math.inf]:
        raise ValueError(f"metrics of {what} with other {kind} buckets: cannot merge")
    previous = 0.0
    counts = []
    for bound in bounds:
        counts.append(int(by_bound[bound] - previous))
        previous = by_bound[bound]
    return counts


def scrape(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The snapshot served at ``url`` (a worker's ``http://host:port/metrics``). A userinfo
    (``http://user:pass@host:port/metrics``) is sent as HTTP basic auth, never as part of the
    host name, and never shown."""
    import urllib.error  # here: http.client and email cost a worker's start-up 15 ms
    import urllib.request

    shown = redact(url)
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"metrics endpoint {shown!r}: expected "
                                 "http://HOST:PORT/metrics")
    request = _request(url, shown)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            text = response.read().decode()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise BackendUnavailableError(f"metrics endpoint {shown} unreachable: "
                                      f"{redact_text(str(exc), *secrets_of(url))}") from exc
    try:
        return from_exposition(text)
    except ValueError as exc:
        raise BackendUnavailableError(f"metrics endpoint {shown}: {exc}") from exc


def _request(url: str, shown: str) -> urllib.request.Request:
    """The request for ``url``: its userinfo taken out of the URL, into an Authorization
    header (basic auth)."""
    import urllib.request

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"metrics endpoint {shown}: malformed URL: {exc}") from exc
    info, at, host = parts.netloc.rpartition("@")
    if not at:
        return urllib.request.Request(url)  # noqa: S310 (http(s) only: checked above)
    user, _, password = info.partition(":")
    plain = urllib.parse.urlunsplit(parts._replace(netloc=host))
    token = base64.b64encode(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
                             .encode()).decode("ascii")
    return urllib.request.Request(plain, headers={"Authorization": f"Basic {token}"})  # noqa: S310


def publish(fleet: Fleet, member: uuid.UUID, metrics: Metrics = METRICS, *,
            mode: str | None = None, native_ids: list[str] | None = None,
            phase: tuple[str, int] | None = None) -> bool:
    """Heartbeat ``member`` with this process's metrics snapshot (stored in ``fleet.metrics``),
    for ``cutover status`` to merge. What a fleet member calls on each heartbeat; False when the
    member is not registered any more (register again). ``native_ids``: the ids the backend's
    own worker registry knows this member by (not counted as native workers).

    The snapshot names ``member`` among the members that carry it (and so does the process's
    ``/metrics``: status counts the process once), and carries the phase and epoch: ``phase``
    as the caller knows it, else read from the plane (one statement per heartbeat, never per
    job; a failed read keeps the last one)."""
    metrics.members.add(str(member))
    if phase is None:
        read = getattr(fleet, "read_phase", None)
        if read is not None:
            try:
                state = read()
                phase = (state.phase.value, state.epoch)
            except CutoverError:
                phase = None
    if phase is not None:
        metrics.set_phase(*phase)
    return fleet.heartbeat(member, mode=mode, metrics=metrics.snapshot(), native_ids=native_ids)


def fleet_snapshots(fleet: Fleet) -> list[dict[str, Any]]:
    """The snapshots the living members of ``fleet`` stored with their last heartbeat."""
    return [m.metrics for m in fleet.alive() if m.metrics]


def once_per_instance(fleet: Iterable[Mapping[str, Any]],
                      scraped: Iterable[Mapping[str, Any]]
                      ) -> tuple[list[Mapping[str, Any]], int]:
    """One snapshot per :class:`~cutover.metrics.Metrics` instance: a scraped one over a
    heartbeat one (fresher), else the latest heartbeat. Snapshots without an instance id
    (another version of the code) are all kept. Returns them and how many were left out as
    another copy of a process already counted."""
    chosen: dict[str, Mapping[str, Any]] = {}
    kept: list[Mapping[str, Any]] = []
    dropped = 0
    for origin, snaps in ((1, scraped), (0, fleet)):
        for snap in snaps:
            instance = snap.get("instance")
            if not instance:
                kept.append(snap)
                continue
            found = chosen.get(instance)
            if found is None:
                chosen[instance] = snap
                continue
            dropped += 1
            if origin == 0 and found.get("_scraped") is None and \
                    float(snap.get("at", 0)) > float(found.get("at", 0)):
                chosen[instance] = snap
    return kept + list(chosen.values()), dropped


def gather(fleet: Iterable[Mapping[str, Any]] = (),
           endpoints: Iterable[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """Merge this process's own metrics, the fleet members' heartbeat snapshots and the
    snapshots scraped from ``endpoints``, each process once (:func:`once_per_instance`);
    return the merged snapshot and where it came from.

    A member's snapshot that cannot be merged (written by another version of the code, other
    buckets) is left out and said so in the sources, rather than fail the whole status.
    """
    own = METRICS.snapshot()
    sources = ["this process"]
    members = mergeable = 0
    beats: list[Mapping[str, Any]] = [own]
    for snap in fleet:
        members += 1
        try:
            merge([snap])
        except (ValueError, KeyError, TypeError):
            continue
        mergeable += 1
        beats.append(snap)
    if members:
        sources.append(f"{mergeable} fleet member(s)" + (
            f" ({members - mergeable} of another version left out)"
            if mergeable < members else ""))
    scraped: list[Mapping[str, Any]] = []
    for url in endpoints:
        scraped.append({**scrape(url), "_scraped": True})
        sources.append(redact(url))
    snapshots, dropped = once_per_instance(beats, scraped)
    if dropped:
        sources.append(f"{dropped} copy(ies) of a process already counted left out")
    return merge(snapshots), sources
