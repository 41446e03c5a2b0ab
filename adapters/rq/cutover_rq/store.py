"""Which Redis store a URL reaches: its database number, read strictly, and its identity.

The identity is a marker written once per database (``SET cutover:store-id <uuid> NX``): it lives
in the data, so every spelling of the store sees it (host name or address, IPv4 or IPv6, TCP or
unix socket, with or without credentials) and it survives restarts as the data does. ``run_id``
from ``INFO server`` does not: it changes on every restart while the jobs persist, so a ledger
keyed on it would forget its history. See docs/architecture.md ("Store identity").
"""

from __future__ import annotations

import logging
import re
import uuid
from urllib.parse import parse_qsl, unquote, urlsplit

import redis

from cutover.backend import StoreIdentity
from cutover.errors import ConfigurationError
from cutover.urls import redact
from cutover_rq import keys

log = logging.getLogger("cutover.rq")

#: The key of the marker, in every Redis database the toolkit opens.
MARKER = keys.STORE_ID
_DIGITS = re.compile(r"^[0-9]+$")


def database_of(url: str) -> int:
    """The Redis database number ``url`` names (path ``/N`` or ``?db=N``; 0 when neither).

    Refuses what redis-py would silently read as database 0 (``/abc``) or read one way of two
    (``/1?db=2``): a drain of the wrong database is a drain of the wrong jobs."""
    parts = urlsplit(url)
    path = "" if parts.scheme.lower().endswith("unix") else unquote(parts.path).strip("/")
    query = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "db"]
    for raw, where in [(path, "path"), *((q, "?db=") for q in query)]:
        if (raw and not _DIGITS.match(raw)) or (where == "?db=" and not raw):
            raise ConfigurationError(f"the Redis database {raw!r} ({where} of {redact(url)}) is "
                                     "not a database number: write redis://host:6379/N with N "
                                     "a number (0 to 15 on a default server)")
    numbers = {int(raw) for raw in [path, *query] if raw}
    if len(numbers) > 1:
        raise ConfigurationError(f"{redact(url)} names more than one Redis database "
                                 f"({', '.join(map(str, sorted(numbers)))}): keep one")
    return numbers.pop() if numbers else 0


def identity(client: redis.Redis, db: int, url: str) -> StoreIdentity:
    """The identity of database ``db`` of the server ``client`` is connected to (writes the
    marker when it is absent)."""
    marker = client.get(MARKER)
    if marker is None:
        try:
            client.set(MARKER, uuid.uuid4().hex, nx=True)
        except redis.ResponseError as exc:  # a read-only replica, or an ACL without SET
            run_id = client.info("server").get("run_id", "")
            log.warning("cannot write the store marker %s at %s (%s): identifying the store by "
                        "the server's run_id, which changes when it restarts", MARKER, url, exc)
            return StoreIdentity(f"redis-run:{run_id}/db{db}", url)
        marker = client.get(MARKER)
    text = marker.decode() if isinstance(marker, bytes) else str(marker)
    return StoreIdentity(f"redis:{text}/db{db}", url)
