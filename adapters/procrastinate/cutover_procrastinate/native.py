"""The way out: a plain ``procrastinate.App`` that runs the registry's tasks as the cutover
worker does.

``make_app(registry, conninfo)`` registers every registry task under its cutover name, aliases
and queue, wrapped so that procrastinate's own worker (``procrastinate --app mod.app worker``,
a dotted path: procrastinate takes no ``mod:app``; or ``app.run_worker()``) gives a job exactly
what the cutover worker gives it:

- arguments decoded from the tagged codec (Decimal, datetime, UUID, bytes, tuple, set... arrive
  as those types, not as ``{"$cutover": ...}`` dicts);
- positional ``*args`` re-attached from the adapter's ``cutover_jobs`` table (procrastinate's
  ``args`` column holds keyword arguments only);
- the job's own retry budget and backoff (``cutover_jobs.max_attempts`` / ``retry_intervals``:
  an RQ ``Retry(max, interval)`` moved over, or the registry's budget recorded by the Router),
  through a :class:`JobBudget` retry strategy that reads what the wrapper found for the job;
- the outcome (error or result) kept in ``cutover_jobs`` as the cutover worker keeps it (a plain
  job gets a row only when there is an error or result to keep), so
  ``cutover`` commands and ``assert_native_parity`` see the same job either way.

A job deferred by plain procrastinate code (no ``cutover_jobs`` row) gets one attempt, as under
the cutover worker, and its args are plain JSON, so it runs unchanged. The connector encodes
what this app's tasks defer with the same codec, so ``task.defer(amount=Decimal("1.10"))``
works here and reaches the task as a Decimal.

What this worker does not do, unlike the cutover worker: it does not read ``cutover_paused``
(procrastinate has no pause); it enforces no timeout (procrastinate has no per-job timeout, so a
task's ``timeout=`` and an RQ job timeout are not applied); a job whose task is not registered
is failed by procrastinate (``TaskNotFound``) instead of being left in place. Held jobs (a drain
in progress) are out of its reach, as of any procrastinate worker: their ``scheduled_at`` is
far in the future. The registered functions take procrastinate's job context first
(``pass_context``): call the registry's own functions directly, not ``app.tasks[name](...)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import inspect
import json
import threading
from collections.abc import Callable
from typing import Any

import procrastinate
import psycopg
from procrastinate import jobs as procrastinate_jobs
from procrastinate.app import WorkerOptions
from procrastinate.exceptions import ConnectorException
from procrastinate.retry import BaseRetryStrategy, RetryDecision

from cutover import codec
from cutover.errors import CutoverError, DecodeError
from cutover.registry import Task, TaskRegistry
from cutover.runner import failure
from cutover_procrastinate import sql

__all__ = ["Budget", "JobBudget", "make_app"]


@dataclasses.dataclass(frozen=True)
class Budget:
    """How many executions a job is allowed in all, and the wait after each failure (the
    last one repeats): the same reading as the adapter's ``JobRecord``."""

    max_attempts: int = 1
    retry_intervals: tuple[float, ...] = ()

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (JobRecord.retry_delay)."""
        if not self.retry_intervals:
            return 0.0
        index = min(max(failed_attempts, 1) - 1, len(self.retry_intervals) - 1)
        return self.retry_intervals[index]


class _Budgets:
    """Budgets the wrappers found, by procrastinate job id, until the retry strategy (called by
    procrastinate's worker right after the task raised) takes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_job: dict[int, Budget] = {}

    def put(self, job_id: int, budget: Budget) -> None:
        with self._lock:
            self._by_job[job_id] = budget

    def pop(self, job_id: int | None) -> Budget | None:
        with self._lock:
            return self._by_job.pop(job_id, None) if job_id is not None else None


class JobBudget(BaseRetryStrategy):
    """A procrastinate retry strategy that follows each job's own budget, as the cutover worker
    does: retry while the attempts made (this one included) are fewer than ``max_attempts``,
    after the job's interval for that attempt. A job with no stored budget gets one attempt."""

    def __init__(self, budgets: _Budgets) -> None:
        self._budgets = budgets

    def get_retry_decision(self, *, exception: BaseException,
                           job: procrastinate_jobs.Job) -> RetryDecision | None:
        budget = self._budgets.pop(job.id) or Budget()
        made = job.attempts + 1
        if made >= budget.max_attempts or isinstance(exception, DecodeError):
            # (undecodable args stay undecodable: retrying cannot help)
            return None
        return RetryDecision(retry_at=dt.datetime.now(dt.UTC)
                             + dt.timedelta(seconds=budget.delay(made)))


@dataclasses.dataclass(frozen=True)
class _Side:
    """What ``cutover_jobs`` keeps for one job that the worker needs."""

    positional: Any  # encoded, as stored
    budget: Budget
    has_outcome: bool = False  # the row holds an error or result (of an earlier attempt)
    table: bool = True  # the cutover_jobs table exists (outcomes are kept there)

    def call(self, raw: dict[str, Any], job_id: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The task's positional and keyword args, decoded (DecodeError if they cannot be)."""
        args = codec.decode(self.positional) if self.positional else []
        kwargs = _kwargs(raw, job_id)
        if not isinstance(args, list):
            raise DecodeError(f"positional args of job {job_id} are not a list")
        return tuple(args), kwargs

    def keeps(self, error: BaseException | None = None, result: Any = None) -> bool:
        """Whether the outcome must be written, as the cutover worker writes it: an error or a
        result (a plain job then gets a row), or an earlier attempt's outcome to clear; a
        success with no result over no outcome (most jobs) needs no write."""
        return self.table and (error is not None or result is not None or self.has_outcome)

    def outcome(self, job_id: int, error: BaseException | None = None,
                result: Any = None) -> dict[str, Any]:
        """The parameters of ``native_outcome`` for this job's error or result."""
        return {"job_id": job_id, "error": None if error is None else _error(error),
                "result": None if error is not None else _result(result)}


def _side(rows: list[dict[str, Any]] | None, attempts: int) -> _Side:
    """``rows`` of ``native_job``; None when there is no cutover_jobs table."""
    if not rows:
        return _Side(None, Budget(max(1, attempts + 1)), table=rows is not None)
    row = rows[0]
    # The same reading as mapping.record_from_row for a running job.
    budget = Budget(max(row["max_attempts"] or 1, attempts + 1, 1),
                    tuple(float(i) for i in row["retry_intervals"] or ()))
    return _Side(row["positional"], budget, has_outcome=row["has_outcome"])


def _unless_no_table(exc: ConnectorException) -> None:
    """Raise ``exc`` unless it says there is no ``cutover_jobs`` table (a database this toolkit
    never wrote to: every job is then a plain procrastinate job, and no outcome is kept)."""
    if not isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
        raise exc


def _kwargs(raw: dict[str, Any], job_id: int) -> dict[str, Any]:
    kwargs = codec.decode(raw)
    if not isinstance(kwargs, dict):  # an escaped dict decodes to a dict; anything else is bad
        raise DecodeError(f"args of job {job_id} are not an object: {type(kwargs).__name__}")
    return kwargs


def _error(exc: BaseException) -> str:
    """The traceback, as the cutover worker keeps it (passwords in URLs redacted)."""
    return failure(exc).traceback or repr(exc)


def _result(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(codec.encode(value, "result"))
    except CutoverError:
        return json.dumps(repr(value))


class _Run:
    """One run of a task under :func:`make_app`: the steps both runners share (read the job's
    ``cutover_jobs`` row, keep its budget for the retry strategy, decode its args, say which
    outcome to write); the runners only do the I/O, sync or async."""

    def __init__(self, budgets: _Budgets, context: procrastinate.JobContext) -> None:
        job = context.job
        assert job.id is not None
        self.job_id, self.attempts, self._budgets = job.id, job.attempts, budgets
        self._side = _Side(None, Budget())

    def found(self, rows: list[dict[str, Any]] | None) -> None:
        """``native_job``'s ``rows`` (None: no cutover_jobs table); the job's budget is kept
        for the retry strategy."""
        self._side = _side(rows, self.attempts)
        self._budgets.put(self.job_id, self._side.budget)

    def args(self, raw: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The task's args, decoded (DecodeError if they cannot be): procrastinate's ``raw``
        kwargs and the positional args ``cutover_jobs`` keeps."""
        return self._side.call(raw, self.job_id)

    def failed(self, exc: BaseException) -> dict[str, Any] | None:
        """``native_outcome``'s parameters for an error, or None (nothing to keep)."""
        return self._side.outcome(self.job_id, error=exc) if self._side.keeps(error=exc) else None

    def succeeded(self, result: Any) -> dict[str, Any] | None:
        """``native_outcome``'s parameters for a result, or None (nothing to keep)."""
        self._budgets.pop(self.job_id)  # no retry: the strategy will not ask
        keep = self._side.keeps(result=result)
        return self._side.outcome(self.job_id, result=result) if keep else None


def _sync_runner(task: Task, app: procrastinate.App, budgets: _Budgets) -> Callable[..., Any]:
    func = task.func

    @functools.wraps(func)
    def run(context: procrastinate.JobContext, /, **raw: Any) -> Any:
        # Runs in one of procrastinate's worker threads; the connector's sync calls go back to
        # the worker's event loop (procrastinate's supported way for sync tasks).
        one = _Run(budgets, context)
        rows: list[dict[str, Any]] | None = None
        try:
            rows = app.connector.execute_query_all(sql.query("native_job"), job_id=one.job_id)
        except ConnectorException as exc:
            _unless_no_table(exc)
        one.found(rows)
        try:
            args, kwargs = one.args(raw)
            result = func(*args, **kwargs)
            if inspect.isawaitable(result):  # a sync function returning a coroutine: as the
                result = asyncio.run(_await(result))  # cutover worker, run it in this thread
        except BaseException as exc:
            if (failed := one.failed(exc)) is not None:
                app.connector.execute_query(sql.query("native_outcome"), **failed)
            raise
        if (kept := one.succeeded(result)) is not None:
            app.connector.execute_query(sql.query("native_outcome"), **kept)
        return result

    return run


def _async_runner(task: Task, app: procrastinate.App, budgets: _Budgets) -> Callable[..., Any]:
    func = task.func

    @functools.wraps(func)
    async def run(context: procrastinate.JobContext, /, **raw: Any) -> Any:
        one = _Run(budgets, context)
        rows: list[dict[str, Any]] | None = None
        try:
            rows = await app.connector.execute_query_all_async(sql.query("native_job"),
                                                               job_id=one.job_id)
        except ConnectorException as exc:
            _unless_no_table(exc)
        one.found(rows)
        try:
            args, kwargs = one.args(raw)
            result = await func(*args, **kwargs)
        except BaseException as exc:
            if (failed := one.failed(exc)) is not None:
                await app.connector.execute_query_async(sql.query("native_outcome"), **failed)
            raise
        if (kept := one.succeeded(result)) is not None:
            await app.connector.execute_query_async(sql.query("native_outcome"), **kept)
        return result

    return run


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _dumps(value: Any) -> str:
    """JSON for the args this app defers: plain JSON as it is, other values tagged."""
    return json.dumps(codec.encode(value, "args"), separators=(",", ":"), ensure_ascii=False)


def make_app(registry: TaskRegistry, conninfo: str, *,
             import_paths: list[str] | None = None,
             worker_defaults: WorkerOptions | None = None,
             **pool_kwargs: Any) -> procrastinate.App:
    """A ``procrastinate.App`` on ``conninfo`` (``postgresql://...``) running every task of
    ``registry`` exactly as ``cutover worker --backend procrastinate`` runs it.

    Tasks keep their cutover names, aliases and queues; their retry strategy is a
    :class:`JobBudget`. Run it with ``procrastinate --app mymodule.app worker`` or
    ``app.run_worker(...)``. ``pool_kwargs`` go to procrastinate's ``PsycopgConnector``
    (``min_size``, ``max_size``, ...); ``import_paths`` and ``worker_defaults`` to the App.
    """
    connector = procrastinate.PsycopgConnector(conninfo=conninfo, json_dumps=_dumps,
                                               **pool_kwargs)
    app = procrastinate.App(connector=connector, import_paths=import_paths,
                            worker_defaults=worker_defaults)
    budgets = _Budgets()
    strategy = JobBudget(budgets)
    for task in registry:
        make = _async_runner if inspect.iscoroutinefunction(task.func) else _sync_runner
        app.task(name=task.name, aliases=list(task.aliases), queue=task.queue,
                 retry=strategy, pass_context=True)(make(task, app, budgets))
    return app
