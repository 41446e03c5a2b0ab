"""The fleet-wide metrics view that ``cutover status`` shows: snapshots gathered from the fleet's
heartbeats (control plane) and from workers' ``/metrics`` endpoints, merged
(:func:`cutover.metrics.merge`).

A worker's endpoint speaks Prometheus text; :func:`from_exposition` reads it back into a snapshot
(the exposition carries every bucket, sum and counter, so nothing is lost on the way).
"""

from __future__ import annotations

import base64
import math
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from cutover.errors import BackendUnavailableError, ConfigurationError
from cutover.metrics import BUCKETS, COUNTERS, METRICS, PROM_NAMES, Metrics, empty, merge
from cutover.urls import redact, redact_text, secrets_of

if TYPE_CHECKING:
    from cutover.control.fleet import Fleet

_LATENCY = "cutover_enqueue_latency_seconds"
_IN_FLIGHT = "cutover_jobs_in_flight"
#: Prometheus family name (without _total) -> snapshot counter key.
_COUNTER_OF = {PROM_NAMES.get(key, f"cutover_{key}"): key for key in COUNTERS}


def from_exposition(text: str) -> dict[str, Any]:
    """A snapshot from the Prometheus text a ``cutover worker --metrics-port`` serves.

    Families that are not cutover's are ignored; latency buckets with other bounds (another
    version of the code) raise ValueError, as :func:`cutover.metrics.merge` does.
    """
    snap = empty()
    backends: dict[str, dict[str, Any]] = snap["backends"]

    def numbers(name: str) -> dict[str, Any]:
        if name not in backends:
            backends[name] = {"latency_buckets": [0] * (len(BUCKETS) + 1), "latency_sum": 0.0,
                              "in_flight": 0, **dict.fromkeys(COUNTERS, 0)}
        return backends[name]

    cumulative: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            backend = sample.labels.get("backend")
            if backend is None:
                continue
            if family.name == _LATENCY:
                n = numbers(backend)
                if sample.name.endswith("_bucket"):
                    cumulative.setdefault(backend, {})[float(sample.labels["le"])] = sample.value
                elif sample.name.endswith("_sum"):
                    n["latency_sum"] = sample.value
            elif family.name == _IN_FLIGHT:
                numbers(backend)["in_flight"] = int(sample.value)
            elif family.name in _COUNTER_OF and sample.name.endswith("_total"):
                numbers(backend)[_COUNTER_OF[family.name]] = int(sample.value)
    for backend, by_bound in cumulative.items():
        bounds = sorted(by_bound)
        if bounds != [*BUCKETS, math.inf]:
            raise ValueError(f"metrics of backend {backend!r} with other latency buckets: "
                             "cannot merge")
        previous = 0.0
        counts = []
        for bound in bounds:
            counts.append(int(by_bound[bound] - previous))
            previous = by_bound[bound]
        backends[backend]["latency_buckets"] = counts
    return snap


def scrape(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The snapshot served at ``url`` (a worker's ``http://host:port/metrics``). A userinfo
    (``http://user:pass@host:port/metrics``) is sent as HTTP basic auth, never as part of the
    host name, and never shown."""
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
            mode: str | None = None, native_ids: list[str] | None = None) -> bool:
    """Heartbeat ``member`` with this process's metrics snapshot (stored in ``fleet.metrics``),
    for ``cutover status`` to merge. What a fleet member calls on each heartbeat; False when the
    member is not registered any more (register again). ``native_ids``: the ids the backend's
    own worker registry knows this member by (not counted as native workers)."""
    return fleet.heartbeat(member, mode=mode, metrics=metrics.snapshot(), native_ids=native_ids)


def fleet_snapshots(fleet: Fleet) -> list[dict[str, Any]]:
    """The snapshots the living members of ``fleet`` stored with their last heartbeat."""
    return [m.metrics for m in fleet.alive() if m.metrics]


def gather(fleet: Iterable[Mapping[str, Any]] = (),
           endpoints: Iterable[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """Merge this process's own metrics, the fleet members' heartbeat snapshots and the
    snapshots scraped from ``endpoints``; return the merged snapshot and where it came from.

    A member's snapshot that cannot be merged (written by another version of the code, other
    buckets) is left out and said so in the sources, rather than fail the whole status.
    """
    snapshots: list[Mapping[str, Any]] = [METRICS.snapshot()]
    sources = ["this process"]
    members = mergeable = 0
    for snap in fleet:
        members += 1
        try:
            merge([snap])
        except (ValueError, KeyError, TypeError):
            continue
        mergeable += 1
        snapshots.append(snap)
    if members:
        sources.append(f"{mergeable} fleet member(s)" + (
            f" ({members - mergeable} of another version left out)"
            if mergeable < members else ""))
    for url in endpoints:
        snapshots.append(scrape(url))
        sources.append(redact(url))
    return merge(snapshots), sources
