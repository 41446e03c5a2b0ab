"""Recovery: before its passes, a drain finishes the moves an interrupted run left half done
(the ledger says which: ``moving`` rows are taken again and put, ``moved`` rows released)."""

from __future__ import annotations

import logging

from cutover.audit import JobClass
from cutover.drain.pipeline import chunks
from cutover.drain.steps import Steps

log = logging.getLogger("cutover.drain")


def recover(steps: Steps, batch_size: int) -> None:
    """Finish the moves an interrupted run of this pair left under way."""
    control, source, target, report = steps.control, steps.source, steps.target, steps.report
    unfinished = control.unfinished(steps.source_key, steps.target_key)
    if not unfinished:
        return
    log.warning("finishing %d move(s) an earlier drain left under way", len(unfinished))
    moving = [i for i, state, _ in unfinished if state == "moving"]
    moved = [i for i, state, _ in unfinished if state == "moved"]
    for chunk in chunks(moving, batch_size):
        held = {r.id: r for r in source.take(chunk, steps.owner).taken}  # with records
        gone = [i for i in chunk if i not in held]
        if held:
            done = steps.put(list(held.values()), recovered=True)
            steps.release([r.id for r in done])
        for job_id in gone:
            # Not held on the source: either the put happened (a failed job, or the release
            # committed while the ledger write did not), or the job is still on the source in a
            # state a drain does not take.
            on_source = source.get(job_id)
            if target.get(job_id) is not None:
                moved.append(job_id)
            elif on_source is not None:
                report.leave(JobClass.IN_PLACE.value, job_id, on_source.task, on_source.queue,
                             f"was moving; now {on_source.state.value} on the source")
            else:
                report.lost.append(job_id)
                log.error("job %s: the ledger says it was moving, but neither backend has it",
                          job_id)
    for chunk in chunks(moved, batch_size):
        steps.release(chunk)
        report.recovered += len(chunk)
