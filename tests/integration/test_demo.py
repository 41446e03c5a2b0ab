"""The README's main job (scripts/demo) runs end to end: the webhook tour on RQ and
Procrastinate, a backlog audited, drained and verified CLEAN."""

from __future__ import annotations

from examples.webhooks import app, demo


def test_the_demo_tour_drains_and_verifies_clean(cutover_redis_url: str,
                                                 cutover_database_url: str) -> None:
    app.processed.clear()  # the tour counts the events it applied in this process
    assert demo.tour(cutover_redis_url, cutover_database_url) == 0
