"""The drain's pipeline: ordered stages, a thread each (read and take | put | release)."""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any

from cutover.record import JobRecord

_END = object()  # the end of a pipeline's input


@dataclasses.dataclass
class Batch:
    ready: list[JobRecord]  # taken on the source
    failed: list[JobRecord]  # failed jobs moving with --include-failed (not taken)
    size: int  # jobs read, for progress
    moved: list[str] = dataclasses.field(default_factory=list)  # now on the target


class Pipeline:
    """Ordered stages, a thread each, joined by short queues: while the reader takes the next
    batch, the put stage writes the one before to the target and the release stage removes the
    one before that from the source. Each stage handles batches in the order they came, so the
    target receives them in the source's order. An error in a stage stops that stage and the
    ones before it (no more reading, no more puts), while the stages after it finish the batches
    they were handed (a batch that was put is still released). Jobs taken and not put stay held,
    jobs put and not released stay in the ledger as moved: the next run finishes both. The
    first error is raised once every thread has ended."""

    def __init__(self, stages: list[tuple[str, Callable[[Any], Any]]], depth: int = 2) -> None:
        self.error: BaseException | None = None
        self.failed = [False] * len(stages)
        self.queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=depth) for _ in stages]
        self.threads = [threading.Thread(target=self._run, args=(i, fn), daemon=True,
                                         name=f"cutover-drain-{name}")
                        for i, (name, fn) in enumerate(stages)]

    def __enter__(self) -> Pipeline:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, index: int, fn: Callable[[Any], Any]) -> None:
        downstream = self.queues[index + 1] if index + 1 < len(self.queues) else None
        while True:
            item = self.queues[index].get()
            if item is _END:
                if downstream is not None:
                    downstream.put(_END)
                return
            if any(self.failed[index:]):
                continue  # this stage or one after it failed: do no more work here
            try:
                out = fn(item)
            except BaseException as exc:
                self.error = self.error or exc
                self.failed[index] = True
                continue
            if downstream is not None:
                downstream.put(out)

    def submit(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queues[0].put(item)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.queues[0].put(_END)
        for thread in self.threads:
            thread.join()
        if self.error is not None and exc is None:
            raise self.error


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
