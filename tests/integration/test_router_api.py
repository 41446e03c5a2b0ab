"""The Router as an application developer uses it, phase by phase: promises a caller relies on
(an id means a job that runs once; a job key means one live job across both backends)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from cutover import Router, adapters
from cutover.control import ControlPlane, LedgerState
from cutover.errors import BackendUnavailableError, ConfigurationError
from cutover.phases import Phase
from cutover.testing import tasks
from cutover.testing.tasks import registry
from tests.integration.control_db import control_database
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


def test_a_database_that_does_not_exist_is_named_in_the_error(cutover_database_url: str) -> None:
    """A typo in the database's name: the error says so (not only that a pool timed out), and
    the password given in the URL is not in it."""
    parts = urlsplit(cutover_database_url)
    url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:s3cret-pw@"
                                           f"{parts.hostname}:{parts.port or 5432}",
                                    path="/no_such_db_apibreak"))
    router = Router(registry, source=url)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as caught:
        router.enqueue(tasks.add, 1, 2)
    router.close()
    message = str(caught.value)
    assert "no_such_db_apibreak" in message and "does not exist" in message, message
    assert "s3cret-pw" not in message
    assert time.monotonic() - started < 30


def test_a_connection_to_another_database_is_refused(pair: Pair) -> None:
    """rampdown, ``connection=`` to a database that is not the target's (here one with the same
    schema: another application's): refused, nothing written there or on the target, rather
    than an id for a job the target's workers never see."""
    pair.control.init()
    move_to(pair.control, Phase.RAMPDOWN)
    with control_database(pair.target_url) as other:
        plane = ControlPlane(other.url)
        plane.init()  # cutover's and procrastinate's schemas there too
        plane.close()
        adapters.open_backend(other.url).close()
        with pair.router() as router, psycopg.connect(other.url) as conn, \
                pytest.raises(ConfigurationError, match="not to this backend"):
            router.enqueue(tasks.add, 1, 2, connection=conn)
        with psycopg.connect(other.url) as conn:
            assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone() == (0,)
        assert list(pair.target.snapshot()) == []
        with pair.router() as router, psycopg.connect(pair.target_url) as conn:
            kept = router.enqueue(tasks.add, 3, 4, connection=conn)  # the right one still joins
            conn.commit()
        assert pair.on(kept) == (False, True)
