"""A worker's start-up, pinned without timing: a cutover worker on the procrastinate side of a
cut-over (control plane; the source given) runs without importing procrastinate, rich, rq,
redis (the source is opened for a shadow dry run only) or prometheus_client (no
--metrics-port); with --metrics-port it imports prometheus_client."""

from __future__ import annotations

import pytest

from tests.unit.test_startup_imports import imported

APP = "cutover.testing.tasks:registry"


@pytest.mark.parametrize("port", [None, "0"])
def test_a_worker_start_imports_only_what_it_needs(urls: tuple[str, str],
                                                   port: str | None) -> None:
    redis_url, pg_url = urls
    args = ["--source", redis_url, "--target", pg_url, "--app", APP, "worker", "--backend",
            "target", "--burst", *(["--metrics-port", port] if port else [])]
    found = imported(*args)
    assert "cutover.worker" in found and "cutover_procrastinate" in found  # it did start
    # Nor the source's driver: it is opened for the first shadow dry run only (phase off here).
    assert not found & {"procrastinate", "rich", "cutover.cli.inspect", "cutover.cli.move",
                        "cutover.cli.phase", "cutover.router", "rq", "redis", "cutover_rq"}
    assert ("prometheus_client" in found) is (port is not None)
