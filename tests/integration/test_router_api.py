"""The Router as an application developer uses it, phase by phase: promises a caller relies on
(an id means a job that runs once; a job key means one live job across both backends)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from cutover.control import LedgerState
from cutover.phases import Phase
from cutover.testing import tasks
from tests.integration.test_router_phases import Pair, move_to


@pytest.fixture
def pair(cutover_redis_url: str, cutover_database_url: str) -> Iterator[Pair]:
    p = Pair(cutover_redis_url, cutover_database_url)
    yield p
    p.source.close()
    p.target.close()
    p.control.close()


def test_a_held_key_in_the_callers_transaction_leaves_no_ledger_row(pair: Pair) -> None:
    """rampdown, ``connection=``: a call whose key a live job holds writes nothing, its ledger
    row included once the caller commits (an ``accepted`` row with no job is a loss to verify)."""
    pair.control.init()
    move_to(pair.control, Phase.RAMPDOWN)
    with pair.router() as router:
        first = router.enqueue(tasks.add, 1, 1, job_key="receipt-1")
        with psycopg.connect(pair.target_url) as conn:
            again = router.enqueue(tasks.add, 2, 2, job_key="receipt-1", connection=conn)
            conn.commit()
    assert again == first
    with psycopg.connect(pair.target_url) as conn:
        rows = conn.execute("SELECT cutover_id, state FROM cutover.ledger").fetchall()
    assert rows == [(first, LedgerState.ACCEPTED.value)]
