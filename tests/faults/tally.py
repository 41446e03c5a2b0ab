"""A task that keeps its own record of every execution, outside the toolkit.

The proof tests count executions from here, not from the toolkit's ledger or worker reports:
``tally(n)`` adds 1 to field ``n`` of the Redis hash ``proof:tally`` on the server named by
``PROOF_TALLY_URL`` (the test's own Redis database; RQ's keys all start with ``rq:``, so RQ and
the adapter never read it). A job that runs twice leaves a 2. Importable by path, so a plain RQ
worker runs the same function.
"""

from __future__ import annotations

import os

import redis

from cutover.registry import TaskRegistry

registry = TaskRegistry()
APP = "tests.faults.tally:registry"
URL_ENV = "PROOF_TALLY_URL"
KEY = "proof:tally"

_clients: dict[str, redis.Redis] = {}


@registry.task
def tally(n: int) -> int:
    url = os.environ[URL_ENV]
    client = _clients.get(url) or _clients.setdefault(url, redis.Redis.from_url(url))
    client.hincrby(KEY, str(n), 1)
    return n


def counts(client: redis.Redis) -> dict[int, int]:
    """Executions per ``n``, from the task's own record."""
    return {int(k): int(v) for k, v in client.hgetall(KEY).items()}
