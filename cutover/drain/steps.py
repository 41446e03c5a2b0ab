"""The drain's writing steps: put (with poison isolation and id conflicts) and release.

Take happens on the reading side (see :mod:`cutover.drain.core`); what is taken is put here on
the target with its ledger rows, then released (removed) from the source. A job the target
refuses is found by halves, given back to the source with a failure row, and reported."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from cutover.audit import JobClass
from cutover.backend import QueueBackend
from cutover.control import ControlPlane
from cutover.drain.report import DrainReport
from cutover.errors import BackendError, BackendUnavailableError, JobConflictError
from cutover.record import JobRecord, JobState, utcnow
from cutover.registry import TaskRegistry

log = logging.getLogger("cutover.drain")

REUSED = ("a new job under the id of a job moved earlier, which the target still has: give "
          "it another id, or let it run on the source")


def put_state(record: JobRecord, now: dt.datetime) -> JobState:
    """The one place that decides the state a job arrives in on the target: failed stays
    failed, a job due later is scheduled, anything else is queued (never held, never
    deferred: a deferred job moves only once its dependencies are done)."""
    if record.state is JobState.FAILED:
        return JobState.FAILED
    if record.run_at and record.run_at > now:
        return JobState.SCHEDULED
    return JobState.QUEUED


class Steps:
    """Put and release for one run of one pair, with the ledger rows of each."""

    def __init__(self, *, source: QueueBackend, target: QueueBackend, control: ControlPlane,
                 registry: TaskRegistry, source_key: str, target_key: str, run_id: str,
                 owner: str, report: DrainReport, shared_source: bool,
                 shared_target: bool) -> None:
        self.source, self.target, self.control = source, target, control
        self.registry = registry
        self.source_key, self.target_key = source_key, target_key
        self.run_id, self.owner, self.report = run_id, owner, report
        # The ledger shares a backend's transaction only when it lives in that backend's database.
        self.shared_source, self.shared_target = shared_source, shared_target
        # Jobs the target refused at put (isolated, given back, reported): not tried again in
        # this run, so that a poison job given back to the head of its list is not read, taken
        # and refused over and over.
        self.refused: dict[str, str] = {}

    def put(self, records: list[JobRecord], recovered: bool = False) -> list[JobRecord]:
        """Put on the target; mark the ledger rows moved (in the target's transaction when it
        shares the control plane's database). Returns the records now on the target."""
        now = utcnow()
        ready = []
        for raw in records:
            record = self.registry.normalize(raw)
            state = put_state(record, now)
            if record.state is not state or record.holder is not None:
                record = record.replace(state=state, holder=None)  # a fresh memo: only if needed
            ready.append(record)

        refusals: list[str] = []
        done = self._put_isolating(ready, refusals)
        if len(ready) > 1 and len(refusals) == len(ready) and len(set(refusals)) == 1:
            # Every job of the batch, for one reason: that is the store (read-only, no
            # rights...), not the jobs. Stop here rather than try the whole source job by job.
            raise BackendError(f"the target refused all {len(ready)} jobs of a batch for one "
                               f"reason: {refusals[0]}; they were given back to the source "
                               "(failure rows recorded)", target=self.target_key)
        if recovered:
            self.report.recovered += len(done)
        else:
            self.report.moved += len(done)
        return done

    def _put_marked(self, records: list[JobRecord]) -> None:
        """One put with its ledger rows marked moved: in the target's own transaction when it
        shares the control plane's database, otherwise only once the put has committed (never
        "moved" before it is)."""
        def mark(conn: Any) -> None:
            if conn is not None:  # the target's own transaction: the rows commit with the jobs
                self.control.record(records, state="moved", source=self.source_key,
                                    target=self.target_key, run_id=self.run_id, conn=conn)
            else:
                self.control.mark([r.id for r in records], state="moved",
                                  source=self.source_key, target=self.target_key)

        self.target.put(records, tx_hook=mark if self.shared_target else None)
        if not self.shared_target:
            mark(None)

    def _put_isolating(self, records: list[JobRecord],
                       refusals: list[str]) -> list[JobRecord]:
        """Put a batch; if the target refuses it, find the jobs it refuses by halves (a batch
        of n with one poison job costs about 2 log2 n puts, not n), put every other one, and
        give each refused job back to the source with a failure row. Only an unreachable
        backend stops the run (the jobs stay held; the next run finishes them). Returns the
        records now on the target; ``refusals`` gets each refused job's reason."""
        if not records:
            return []
        try:
            self._put_marked(records)
            return records
        except BackendUnavailableError:
            raise
        except JobConflictError as exc:
            if len(records) == 1:
                return self._conflict(records[0], exc)
        except Exception as exc:  # whatever the target says, it is about these jobs
            if len(records) == 1:
                self._refuse(records[0], exc)
                refusals.append(str(exc))
                return []
        half = len(records) // 2
        return (self._put_isolating(records[:half], refusals)
                + self._put_isolating(records[half:], refusals))

    def without_reused_ids(self, work: list[JobRecord]) -> list[JobRecord]:
        """``work`` less the jobs whose id a finished move of this pair gave to a job the target
        still has: each is a new job under a used id (see :meth:`_conflict`), given back before
        this run's intent row would overwrite the ledger's record of that finished move."""
        pair = (self.source_key, self.target_key)
        rows = self.control.states([r.id for r in work])
        clash = {r.id for r in work if (row := rows.get(r.id)) is not None
                 and row[0] == "released" and row[1:] == pair
                 and self.target.get(r.id) is not None}
        for record in work:
            if record.id in clash:
                self._give_back(record, "id_conflict", REUSED)
        return [r for r in work if r.id not in clash] if clash else work

    def _conflict(self, record: JobRecord, exc: JobConflictError) -> list[JobRecord]:
        """The target has a different job with this id: ours if a run put it and did not finish
        the move (the ledger says moving or moved; a worker may have run it since), else a real
        collision (given back). A finished move of this pair ("released") removed its job from
        the source: a job under that id on the source now is a new one (a producer that names
        its jobs used the id again), and taking the target's old job for it would delete the
        only copy of the new one."""
        row = self.control.states([record.id]).get(record.id)
        if row is not None and row[0] == "released" and row[1:] == (self.source_key,
                                                                     self.target_key):
            self._give_back(record, "id_conflict", f"{REUSED} ({exc})")
            return []
        if (row is not None and row[1:] == (self.source_key, self.target_key)
                and self.target.get(record.id) is not None):
            self.control.record([record], state="moved", source=self.source_key,
                                target=self.target_key, run_id=self.run_id)
            return [record]
        self._give_back(record, "id_conflict", str(exc))
        return []

    def _refuse(self, record: JobRecord, exc: BaseException) -> None:
        """The target refused this one job: give it back, say why, carry on."""
        self._give_back(record, JobClass.UNSUPPORTED.value, f"the target refused it: {exc}")

    def _give_back(self, record: JobRecord, cls: str, reason: str) -> None:
        """A job this run took and will not move: back to where it was on the source, its
        intent row (if any) forgotten, a failure row and a line in the report."""
        log.error("job %r left on the source (%s): %s", record.id, cls, reason)
        self.source.give_back([record.id], self.owner)
        if not self.shared_target:
            # The intent row written before the put: the job never moved.
            self.control.forget([record.id], source=self.source_key, target=self.target_key)
        self.control.fail(self.run_id, [(record.id, self.target_key, cls, reason)])
        self.refused[record.id] = reason
        self.report.leave(cls, record.id, record.task, record.queue, reason)

    def release(self, ids: list[str]) -> None:
        """Remove what was put from the source; ledger rows become released (in the source's
        transaction when it shares the control plane's database)."""
        if not ids:
            return

        def mark(conn: Any) -> None:
            self.control.mark(ids, state="released", source=self.source_key,
                              target=self.target_key, conn=conn)

        self.source.remove(ids, tx_hook=mark if self.shared_source else None)
        if not self.shared_source:
            mark(None)
