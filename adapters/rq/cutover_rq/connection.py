"""The RQ adapter's connection to Redis: its URL, errors as the toolkit's, the Lua scripts, the
queue list, each queue's serializer, and reading one job. RQBackend (backend.py) builds on it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.commands.core import Script

from cutover.backend import StoreIdentity
from cutover.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    CutoverError,
)
from cutover.record import JobRecord
from cutover.urls import redact, redact_text, secrets_of
from cutover_rq import keys, location, scripts, store
from cutover_rq.decode import payload_kind
from cutover_rq.jobhash import as_hash, reply_text

if TYPE_CHECKING:
    from cutover_rq.working import Claim


class RQConnection:
    """One Redis database as the RQ adapter reaches it (see ``RQBackend`` for the URL)."""

    def __init__(self, url: str, *, client: redis.Redis | None = None) -> None:
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query))
        self.serializer_name = params.pop("serializer", "pickle")
        if self.serializer_name not in ("pickle", "json"):
            raise ConfigurationError(f"serializer must be pickle or json, not "
                                     f"{self.serializer_name!r}", url=redact(url))
        base = url.split("?", 1)[0]
        self._raw_url = f"{base}?{urlencode(params)}" if params else base
        self._url = redact(url)
        self._secrets = secrets_of(url)
        self.db = store.database_of(url)
        self._identity: StoreIdentity | None = None
        try:
            self.redis: redis.Redis = client or redis.Redis.from_url(
                self._raw_url, socket_connect_timeout=5, health_check_interval=30)
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {self._url}: "
                                     f"{redact_text(str(exc), *self._secrets)}") from exc
        self._scripts: dict[str, Script] = {}
        self._claims: dict[str, Claim] = {}
        self._skipped: set[str] = set()  # jobs this process's worker refused to run
        self._learned: dict[str, tuple[str, float]] = {}  # queue -> (serializer, valid until)
        self._workers: set[str] = set()  # cutover workers this backend heartbeats for
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"RQBackend({self._url!r})"

    def identity(self) -> StoreIdentity:
        """``redis:<marker>/db<N>``: see :mod:`cutover_rq.store`."""
        if self._identity is not None:
            return self._identity
        with self._errors("reading the store's identity"):
            found = store.identity(self.redis, self.db, self._url)
        if found.key.startswith("redis:"):  # the fallback is asked again: a marker may come
            self._identity = found
        return found

    def read_cutover_marker(self) -> str | None:
        """The cut-over marker's text (``cutover:cutover``), or None: see cutover/marker.py."""
        with self._errors("reading the cut-over marker"):
            raw = self.redis.get(keys.CUTOVER_MARKER)
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    def write_cutover_marker(self, text: str) -> None:
        """Write (overwrite) the cut-over marker; it never expires."""
        with self._errors("writing the cut-over marker"):
            self.redis.set(keys.CUTOVER_MARKER, text)

    # -- plumbing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except CutoverError:
            raise
        except redis.AuthenticationError as exc:  # a ConnectionError to redis-py; not to people
            raise BackendUnavailableError(
                f"Redis at {self._url} refused the credentials while {doing}: "
                f"{redact_text(str(exc), *self._secrets)}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailableError(
                f"Redis at {self._url} is unreachable while {doing}: "
                f"{redact_text(str(exc), *self._secrets)}") from exc
        except redis.RedisError as exc:
            raise BackendError(f"Redis at {self._url} failed while {doing}: "
                               f"{redact_text(str(exc), *self._secrets)}") from exc

    def _script(self, name: str) -> Script:
        with self._lock:
            if name not in self._scripts:
                self._scripts[name] = self.redis.register_script(scripts.source(name))
            return self._scripts[name]

    def _queues(self) -> list[str]:
        return location.queue_names(self.redis)


    # -- serializers -----------------------------------------------------------------------
    def queue_serializer(self, queue: str) -> str:
        """The serializer a new job of ``queue`` is written with: the one its jobs use (read
        from up to ten of them: waiting, scheduled, finished and failed; the majority wins),
        else the URL's ``serializer`` option. Learned answers are kept a minute, the fallback a
        few seconds (a queue that was empty may fill)."""
        now = time.monotonic()
        with self._lock:
            known = self._learned.get(queue)
        if known is not None and known[1] > now:
            return known[0]
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(keys.queue(queue), 0, 9)
        for registry in ("scheduled", "finished", "failed"):
            pipe.zrevrange(keys.registry(registry, queue), 0, 9)
        ids = list(dict.fromkeys(reply_text(i) for found in pipe.execute() for i in found))[:10]
        votes = {"pickle": 0, "json": 0}
        if ids:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(keys.job(job_id), "data")
            for data in pipe.execute():
                if data:
                    votes[payload_kind(data)] += 1
        if votes["pickle"] != votes["json"]:
            learned, keep = max(votes, key=lambda k: votes[k]), 60.0
        else:
            learned, keep = self.serializer_name, 5.0
        with self._lock:
            self._learned[queue] = (learned, now + keep)
        return learned


    def get(self, job_id: str) -> JobRecord | None:
        with self._errors(f"reading job {job_id}"):
            h = as_hash(self.redis.hgetall(keys.job(job_id)))
            if not h:
                return None
            return location.locate(self.redis, [(job_id, h)])[0]


    def close(self) -> None:
        with self._lock:
            workers = sorted(self._workers)
        if workers:  # they stopped: no longer workers that could run jobs
            with contextlib.suppress(redis.RedisError):
                self.redis.zrem(keys.CUTOVER_WORKERS, *workers)
        self.redis.close()
