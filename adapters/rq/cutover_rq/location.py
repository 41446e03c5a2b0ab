"""Where a job is: RQ's queue lists and registries, cutover's held registry, orphans.

A job's status says where RQ keeps it (``PLACED``); ``locate`` checks that it is there, and
finds a job that is not (``misplaced:<key>`` when another queue's list or registry holds it,
else ``orphan``). A snapshot keeps an index of each queue list it reads (``ListIndex``) instead
of asking LPOS once per job. ``at`` reads the jobs of one known place (the drain's batches),
``counts`` counts each place, and ``departures`` reads what is left of jobs whose hash is gone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import cast

import redis

from cutover.audit import MISPLACED
from cutover.backend import Departure, Partition, in_partition
from cutover.record import JobRecord, JobState
from cutover_rq import jobhash, keys
from cutover_rq.jobhash import STATUS, as_hash, field_text, reply_text

REGISTRIES = ("scheduled", "deferred", "failed", "finished", "canceled")
#: Where RQ keeps a waiting or failed job of each state (the drain reads these places).
PLACED = {JobState.QUEUED: "queue", JobState.SCHEDULED: "scheduled",
          JobState.DEFERRED: "deferred", JobState.FAILED: "failed"}


def placed(state: JobState, queue: str) -> str:
    """The key where RQ keeps a job of ``state`` (one of ``PLACED``) and ``queue``."""
    return keys.queue(queue) if PLACED[state] == "queue" else keys.registry(PLACED[state], queue)


def queue_names(client: redis.Redis) -> list[str]:
    """The queues RQ knows (``rq:queues``), sorted."""
    names = {reply_text(k)[len(keys.QUEUE_PREFIX):]
             for k in cast(set[bytes], client.smembers(keys.QUEUES))
             if reply_text(k).startswith(keys.QUEUE_PREFIX)}
    return sorted(names)


LPOS_SCAN = 100_000  # at most this many list entries per LPOS (a bounded server-side scan)


class ListIndex:
    """The members of a list as it was read (in chunks), for membership tests during a
    snapshot. Kept as the interpreter's 64-bit hashes of the ids, not the ids: about 60 bytes a
    member (a million-job queue: ~60 MB, once per snapshot). A hash collision can only make an
    orphan look queued."""

    def __init__(self, client: redis.Redis, key: str, chunk: int = 20_000) -> None:
        self.members: set[int] = set()
        start = 0
        while True:
            ids = cast(list[bytes], client.lrange(key, start, start + chunk - 1))
            self.members.update(map(hash, ids))
            if len(ids) < chunk:
                return
            start += chunk

    def __contains__(self, job_id: str) -> bool:
        return hash(job_id.encode("utf-8", "surrogateescape")) in self.members


def locate(client: redis.Redis, batch: list[tuple[str, dict[bytes, bytes]]],
           lists: dict[str, ListIndex] | None = None) -> list[JobRecord]:
    """Records for a batch of hashes, with where each one really is: one pipeline, and for
    queued jobs a look in their queue's list.

    A waiting or failed job that is not where RQ keeps a job of its status and queue is
    looked for in the other queues' lists and registries: found there it is
    ``misplaced:<key>`` (a worker of that queue would run it), else ``orphan``. The drain,
    which reads those lists and registries, places it the same way (see ``at``), so audit
    and the drain classify it alike.

    ``lists``: indexes of the queue lists, kept for a whole snapshot. Without them LPOS
    finds a queued job in its list — right for one job, but for a snapshot it would scan the
    list on the server once per job (quadratic: hours for a million-job queue, with Redis
    blocked meanwhile)."""
    pipe = client.pipeline(transaction=False)
    registries: list[bool] = []  # a third answer: the job's deferred or failed registry
    for job_id, h in batch:
        origin = field_text(h, "origin") or ""
        status = field_text(h, "status") or ""
        pipe.zscore(keys.registry("scheduled", origin), job_id)
        pipe.lpos(keys.intermediate(origin), job_id)
        registries.append(status in ("deferred", "failed"))
        if registries[-1]:
            pipe.zscore(keys.registry(status, origin), job_id)
    answers = iter(pipe.execute())
    queued = [i for i, (_, h) in enumerate(batch)
              if STATUS.get(field_text(h, "status") or "") is JobState.QUEUED
              and not h.get(b"cutover_held")]
    in_queue = in_queues(client, [batch[i] for i in queued], lists)
    out = []
    astray: list[int] = []
    for i, (job_id, h) in enumerate(batch):
        score, in_intermediate = next(answers), next(answers)
        registered = next(answers) if registries[i] else None
        state = STATUS.get(field_text(h, "status") or "")
        origin = field_text(h, "origin") or ""
        location: str | None = None
        if h.get(b"cutover_held"):
            location = keys.held(origin)
        elif in_intermediate is not None:
            location = keys.intermediate(origin)
        elif job_id in in_queue:
            location = keys.queue(origin)
        elif score is not None:
            location = keys.registry("scheduled", origin)
        elif registered is not None and state in (JobState.DEFERRED, JobState.FAILED):
            location = keys.registry(state.value, origin)
        if state in PLACED and not h.get(b"cutover_held") and in_intermediate is None:
            if location is None:
                astray.append(i)
                location = "orphan"
            elif location != placed(state, origin):
                location = MISPLACED + location  # e.g. queued, in the scheduled registry
        record = jobhash.record(job_id, h, score, location)
        if in_intermediate is not None and record.state is JobState.QUEUED:
            record = record.replace(state=JobState.STARTED)
        out.append(record)
    if astray:
        found = find_elsewhere(client, [batch[i][0] for i in astray], lists)
        for i in astray:
            if out[i].id in found and not out[i].problem:
                out[i] = out[i].replace(location=MISPLACED + found[out[i].id])
    return out


def find_elsewhere(client: redis.Redis, ids: list[str],
                   lists: dict[str, ListIndex] | None) -> dict[str, str]:
    """Where jobs not found in their own place sit: another queue's list, or a registry
    the drain reads (scheduled, deferred, failed) of any queue. id -> key."""
    found: dict[str, str] = {}
    names = queue_names(client)
    pipe = client.pipeline(transaction=False)
    regs = [keys.registry(reg, q) for q in names for reg in ("scheduled", "deferred", "failed")]
    for job_id in ids:
        for key in regs:
            pipe.zscore(key, job_id)
    answers = pipe.execute()
    for n, job_id in enumerate(ids):
        hits = [k for k, a in zip(regs, answers[n * len(regs):(n + 1) * len(regs)],
                                  strict=True) if a is not None]
        if hits:
            found[job_id] = hits[0]
    rest = [i for i in ids if i not in found]
    for q in names if rest else []:
        key = keys.queue(q)
        fake = [(job_id, {b"origin": q.encode("utf-8", "surrogateescape")})
                for job_id in rest if job_id not in found]
        for job_id in in_queues(client, fake, lists):
            found[job_id] = key
    return found


def in_queues(client: redis.Redis, batch: list[tuple[str, dict[bytes, bytes]]],
              lists: dict[str, ListIndex] | None) -> set[str]:
    """Which of these queued jobs are in their queue's list. With indexes, a job the index
    does not know (enqueued since it was read, or an orphan) is looked for with LPOS from
    the tail, where RQ appends, then from the head: each scan bounded."""
    found: set[str] = set()
    unknown: list[tuple[str, str]] = []
    for job_id, h in batch:
        key = keys.queue(field_text(h, 'origin') or '')
        if lists is None:
            unknown.append((job_id, key))
            continue
        if key not in lists:
            lists[key] = ListIndex(client, key)
        if job_id in lists[key]:
            found.add(job_id)
        else:
            unknown.append((job_id, key))
    if not unknown:
        return found
    bound = None if lists is None else LPOS_SCAN
    pipe = client.pipeline(transaction=False)
    for job_id, key in unknown:
        pipe.lpos(key, job_id, rank=-1, maxlen=bound)
        if bound is not None:
            pipe.lpos(key, job_id, maxlen=bound)
    answers = pipe.execute()
    step = 1 if bound is None else 2
    for n, (job_id, _) in enumerate(unknown):
        if any(a is not None for a in answers[step * n: step * n + step]):
            found.add(job_id)
    return found


def snapshot_batch(client: redis.Redis, ids: list[str], states: Collection[JobState] | None,
                   queues: Collection[str] | None,
                   lists: dict[str, ListIndex] | None = None) -> Iterator[JobRecord]:
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(keys.job(job_id))
    hashes = [(job_id, as_hash(h)) for job_id, h in zip(ids, pipe.execute(), strict=True)
              if h and (queues is None or field_text(h, "origin") in queues)]
    for record in locate(client, hashes, lists):
        if states is None or record.state in states:
            yield record


def read_range(client: redis.Redis, key: str, is_list: bool, start: int, end: int
               ) -> tuple[list[str], list[float | None]]:
    if is_list:
        ids = [reply_text(i) for i in cast(list[bytes], client.lrange(key, start, end))]
        return ids, [None] * len(ids)
    pairs = cast(list[tuple[bytes, float]],
                 client.zrange(key, start, end, withscores=True))
    return [reply_text(i) for i, _ in pairs], [float(sc) for _, sc in pairs]


def at(client: redis.Redis, key: str, ids: list[str],
       scores: list[float | None]) -> list[JobRecord]:
    """Records of jobs read from one known place (no need to look for them)."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(keys.job(job_id))
    out = []
    scheduled = key.startswith(keys.SCHEDULED_PREFIX)
    for job_id, h, score in zip(ids, pipe.execute(), scores, strict=True):
        if not h:
            continue  # an id whose hash is gone: RQ skips those too
        record = jobhash.record(job_id, as_hash(h), score if scheduled else None, key)
        if (record.state in PLACED and not record.problem
                and key != placed(record.state, record.queue)):
            # Not where RQ keeps a job of its status and queue: taking it (by its origin)
            # would leave it here for a worker to run. Audit says the same (``locate``).
            record = record.replace(location=MISPLACED + key)
        out.append(record)
    return out


def counts(client: redis.Redis, queues: Collection[str] | None = None
           ) -> dict[str, dict[JobState, int]]:
    """Jobs per queue and state: LLEN/ZCARD in one pipeline (never RQ's registry ``count``,
    which runs cleanup)."""
    names = [q for q in queue_names(client) if queues is None or q in queues]
    pipe = client.pipeline(transaction=False)
    for q in names:
        pipe.llen(keys.queue(q))
        pipe.zcard(keys.registry("ready", q))
        pipe.llen(keys.intermediate(q))
        pipe.zcard(keys.registry("wip", q))
        for reg in REGISTRIES:
            pipe.zcard(keys.registry(reg, q))
        pipe.zcard(keys.held(q))
    raw = pipe.execute()
    out: dict[str, dict[JobState, int]] = {}
    width = 5 + len(REGISTRIES)
    for i, q in enumerate(names):
        queued, ready, inter, wip, sched, deferred, failed, finished, canceled, held = \
            raw[i * width:(i + 1) * width]
        per = dict.fromkeys(JobState, 0)
        per[JobState.QUEUED] = queued + ready
        per[JobState.STARTED] = inter + wip
        per[JobState.SCHEDULED] = sched
        per[JobState.DEFERRED] = deferred
        per[JobState.FAILED] = failed
        per[JobState.FINISHED] = finished
        per[JobState.CANCELED] = canceled
        per[JobState.HELD] = held
        out[q] = per
    return out


def places(names: Sequence[str], wanted: set[JobState]) -> list[tuple[str, bool]]:
    """The places the drain reads for jobs of ``wanted`` states, in order (key, is a list)."""
    out: list[tuple[str, bool]] = []
    for q in names:
        if wanted & {JobState.QUEUED, JobState.SCHEDULED}:
            out.append((keys.queue(q), True))
        if wanted & {JobState.SCHEDULED, JobState.QUEUED}:
            out.append((keys.registry("scheduled", q), False))
        if JobState.DEFERRED in wanted:
            out.append((keys.registry("deferred", q), False))
        if JobState.HELD in wanted:
            out.append((keys.held(q), False))
        if JobState.FAILED in wanted:
            out.append((keys.registry("failed", q), False))
    return out


def walk(client: redis.Redis, key: str, is_list: bool, batch_size: int,
         partition: Partition | None, wanted: set[JobState]) -> Iterator[list[JobRecord]]:
    """Batches of the jobs of one place, head first. The place is re-anchored after each
    batch, so jobs the consumer took (or left) are neither skipped nor read twice. Redis is
    read only while the next batch is asked for."""
    start = 0
    previous: list[str] = []
    while True:
        if previous:
            # Re-anchor: jobs of the previous batch still at `start` stayed in place.
            again, _ = read_range(client, key, is_list, start, start + len(previous) - 1)
            left = set(previous)
            kept = 0
            for job_id in again:
                if job_id not in left:
                    break
                kept += 1
            start += kept
        ids, scores = read_range(client, key, is_list, start, start + batch_size - 1)
        if not ids:
            return
        mine = [(i, sc) for i, sc in zip(ids, scores, strict=True)
                if in_partition(i, partition)]
        records = [r for r in at(client, key, [i for i, _ in mine], [sc for _, sc in mine])
                   if r.state in wanted]
        previous = ids
        if records or partition is not None:
            yield records


def departures(client: redis.Redis, job_ids: Sequence[str]) -> dict[str, Departure]:
    """What Redis still remembers of jobs whose hash is gone (see ``RQBackend.departures``)."""
    out: dict[str, Departure] = {}
    queues = queue_names(client)
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.exists(keys.job(job_id))
        pipe.hget(keys.ENDED, job_id)
        pipe.xrevrange(keys.results(job_id), count=1)
        for q in queues:
            pipe.zscore(keys.registry("finished", q), job_id)
            pipe.zscore(keys.registry("failed", q), job_id)
    answers = iter(pipe.execute())
    for job_id in job_ids:
        exists, ended, results = next(answers), next(answers), next(answers)
        registries = [(next(answers), next(answers)) for _ in queues]
        if exists:
            continue
        found = jobhash.departure(ended, results, registries)
        if found is not None:
            out[job_id] = found
    return out
