"""Every Redis key the RQ adapter reads or writes, named once.

RQ's own keys (rq 2.x and 3.x spell them alike):

- ``rq:job:{id}``: the job hash; ``rq:job:{id}:dependents`` (children waiting on it) and
  ``rq:job::{id}:dependencies`` (its parents; note the double colon, as RQ writes it)
- ``rq:queues`` (the set of ``rq:queue:{q}`` names), ``rq:queue:{q}`` (the waiting list),
  ``rq:queue:{q}:intermediate`` (RQ's take-in-progress list), ``rq:ready:{q}`` (rq 3)
- registries (sorted sets): ``rq:scheduled:{q}``, ``rq:deferred:{q}``, ``rq:failed:{q}``,
  ``rq:finished:{q}``, ``rq:canceled:{q}``, ``rq:wip:{q}`` (started: member ``{id}:{execution}``)
- ``rq:results:{id}`` (the result stream), ``rq:executions:{id}``
- ``rq:workers`` (RQ's worker names) and ``rq:worker:{name}`` (a worker's hash)

Cutover's own keys:

- ``cutover:key:{job_key}`` (live holder of a job key), ``cutover:held:{q}`` (held jobs),
  ``cutover:held-dependents:{parent}`` (held deferred jobs, out of RQ's dependents set)
- ``cutover:paused``, ``cutover:worker:{name}`` (heartbeats), ``cutover:workers`` (cutover
  workers by last heartbeat, a sorted set: ``native_workers`` lists those outside the fleet),
  ``cutover:ended`` (how moved
  jobs ended), ``cutover:store-id`` (the store's identity marker: see store.py),
  ``cutover:cutover`` (the cut-over marker: this store is in a staged cut-over; see
  cutover/marker.py)

The Lua scripts (``lua/``) build the same names from the prefixes in ``LUA_PREFIXES`` (a unit
test checks that they use no other); nothing else in the Python code spells a key.
"""

from __future__ import annotations

JOB_PREFIX = "rq:job:"
#: SCAN pattern of job hashes (also matches the dependents/dependencies keys: filter by ':').
JOB_PATTERN = JOB_PREFIX + "*"
QUEUES = "rq:queues"
QUEUE_PREFIX = "rq:queue:"
WORKERS = "rq:workers"
WORKER_PREFIX = "rq:worker:"
SCHEDULED_PREFIX = "rq:scheduled:"
ENDED = "cutover:ended"
PAUSED = "cutover:paused"
CUTOVER_WORKERS = "cutover:workers"
STORE_ID = "cutover:store-id"
CUTOVER_MARKER = "cutover:cutover"

#: The key prefixes the Lua scripts put together ('rq:' .. registry .. ':' .. queue and so on).
LUA_PREFIXES = frozenset({
    "rq:", "rq:job:", "rq:job::", "rq:queue:", "rq:queues", "rq:scheduled:", "rq:deferred:",
    "rq:failed:", "rq:finished:", "rq:wip:", "rq:results:", "rq:executions:",
    "cutover:key:", "cutover:held:", "cutover:held-dependents:", "cutover:paused",
    "cutover:ended",
})


def job_key(key: str) -> str:
    """The live holder of a cutover job key (set by lua/enqueue.lua)."""
    return f"cutover:key:{key}"


def job(job_id: str) -> str:
    """The job hash."""
    return f"{JOB_PREFIX}{job_id}"


def dependents(parent: str) -> str:
    """RQ's set of the jobs waiting on ``parent``."""
    return f"{JOB_PREFIX}{parent}:dependents"


def queue(name: str) -> str:
    """RQ's list of the queue's waiting jobs."""
    return f"{QUEUE_PREFIX}{name}"


def intermediate(name: str) -> str:
    """RQ's list of jobs a worker is taking from the queue."""
    return f"{QUEUE_PREFIX}{name}:intermediate"


def registry(kind: str, name: str) -> str:
    """An RQ registry (sorted set) of the queue: scheduled, deferred, failed, finished,
    canceled, wip (started) or ready."""
    return f"rq:{kind}:{name}"


def results(job_id: str) -> str:
    """RQ's result stream of the job."""
    return f"rq:results:{job_id}"


def worker(name: str) -> str:
    """RQ's hash of one of its workers (``name`` with or without the prefix)."""
    return name if name.startswith(WORKER_PREFIX) else f"{WORKER_PREFIX}{name}"


def held(name: str) -> str:
    """Cutover's registry of the queue's held jobs."""
    return f"cutover:held:{name}"


def heartbeat(worker_name: str) -> str:
    """A cutover worker's heartbeat."""
    return f"cutover:worker:{worker_name}"
