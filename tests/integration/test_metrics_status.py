"""``cutover status`` merges the metrics of workers' endpoints with this process's: the table,
--json, and --prometheus (valid text exposition)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from cutover import metrics
from cutover.cli import cli


@pytest.fixture
def endpoints() -> Iterator[list[str]]:
    """Two members serving their metrics over HTTP, as two workers' --metrics-port would.
    Backend names are this test's own: the test process's global metrics may hold others."""
    a, b = metrics.Metrics(), metrics.Metrics()
    for _ in range(9):
        a.enqueued("status-test", 0.004)
    b.enqueued("status-test", 0.8)
    a.outcome("status-test", "succeeded")
    b.outcome("status-test", "succeeded")
    b.outcome("status-test", "failed")
    a.claimed("status-test")
    b.claimed("status-test")
    b.duplicate_skipped("status-test")
    a.shadow_result("status-test", True)
    b.shadow_result("status-test", False)
    servers = [metrics.serve(0, metrics=a), metrics.serve(0, metrics=b)]
    try:
        yield [f"http://127.0.0.1:{s.server_port}/metrics" for s in servers]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def test_status_prometheus_is_valid_exposition_of_the_merged_members(
        endpoints: list[str]) -> None:
    args = ["status", "--prometheus"]
    for url in endpoints:
        args += ["--metrics-from", url]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    samples = {(s.name, s.labels.get("le")): s.value
               for f in text_string_to_metric_families(result.stdout) for s in f.samples
               if s.labels.get("backend") == "status-test"}
    assert samples[("cutover_succeeded_total", None)] == 2
    assert samples[("cutover_failed_total", None)] == 1
    assert samples[("cutover_jobs_in_flight", None)] == 2
    assert samples[("cutover_duplicates_skipped_total", None)] == 1
    assert samples[("cutover_shadow_runs_total", None)] == 2
    assert samples[("cutover_shadow_matched_total", None)] == 1
    assert samples[("cutover_enqueue_latency_seconds_count", None)] == 10
    assert samples[("cutover_enqueue_latency_seconds_bucket", "0.005")] == 9
    assert samples[("cutover_enqueue_latency_seconds_bucket", "+Inf")] == 10


def test_status_json_summarizes_the_merged_metrics_per_backend(endpoints: list[str]) -> None:
    result = CliRunner().invoke(
        cli, ["--json", "--source", "memory://metrics-status", "status"],
        env={"CUTOVER_METRICS_FROM": " ".join(endpoints)})
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)["metrics"]
    assert view["sources"] == ["this process", *endpoints]
    row = view["backends"]["status-test"]
    # 9 calls in (3 ms, 5 ms], 1 in (0.7 s, 1 s]: p50 inside the first, p99 past it.
    assert 0.003 < row["enqueue_p50"] <= 0.005
    assert 0.7 < row["enqueue_p99"] <= 1.0
    assert row["consistency_rate"] == pytest.approx(0.5)
    assert (row["succeeded"], row["failed"], row["in_flight"], row["duplicates_skipped"]) == (
        2, 1, 2, 1)


def test_status_table_shows_the_metrics(endpoints: list[str]) -> None:
    result = CliRunner().invoke(cli, ["--source", "memory://metrics-status", "status",
                                      "--metrics-from", endpoints[0]])
    assert result.exit_code == 0, result.output
    assert "status-test" in result.stdout
    assert "50.0% of 2" not in result.stdout  # only member a: 1 of 1 matched
    assert "100.0% of 1" in result.stdout


def test_an_unreachable_endpoint_is_named() -> None:
    result = CliRunner().invoke(cli, ["status", "--prometheus", "--metrics-from",
                                      "http://127.0.0.1:1/metrics"])
    assert result.exit_code == 2
    assert "metrics endpoint http://127.0.0.1:1/metrics unreachable" in result.output


def test_status_merges_the_snapshots_fleet_members_heartbeat(cutover_database_url: str) -> None:
    from cutover.control import ControlPlane, MemberKind
    from cutover.fleet_metrics import publish

    control = ControlPlane(cutover_database_url)
    try:
        control.init()
        counted = []
        for n in (1, 2):
            member = control.register(MemberKind.WORKER, side="target", backend="procrastinate")
            mine = metrics.Metrics()
            for _ in range(n):
                mine.outcome("fleet-test", "succeeded")
                mine.claimed("fleet-test")
            mine.enqueued("fleet-test", 0.002 * n)
            assert publish(control, member, mine) is True
            counted.append(member)
        # A member of another version: its snapshot cannot be merged, it is left out (named).
        odd = control.register(MemberKind.PRODUCER)
        control.heartbeat(odd, metrics={"version": 99, "buckets": [1.0], "backends": {}})
    finally:
        control.close()
    result = CliRunner().invoke(cli, ["--json", "--control", cutover_database_url,
                                      "--source", "memory://metrics-fleet", "status"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)["metrics"]
    assert "2 fleet member(s) (1 of another version left out)" in view["sources"]
    row = view["backends"]["fleet-test"]
    assert (row["succeeded"], row["in_flight"], row["enqueued"]) == (3, 3, 2)
    prom = CliRunner().invoke(cli, ["--control", cutover_database_url, "status",
                                    "--prometheus"])
    assert prom.exit_code == 0, prom.output
    samples = {s.name: s.value for f in text_string_to_metric_families(prom.stdout)
               for s in f.samples if s.labels.get("backend") == "fleet-test"
               and "le" not in s.labels}
    assert samples["cutover_succeeded_total"] == 3
    assert samples["cutover_enqueue_latency_seconds_count"] == 2
