"""The task registry: the one place that knows which functions jobs may run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

from cutover import codec
from cutover.errors import DuplicateTaskError, UnknownTaskError, UnsupportedValueError
from cutover.record import JobRecord, exponential_intervals, new_job_id, utcnow

F = TypeVar("F", bound=Callable[..., Any])

Backoff = float | int | Sequence[float]


@functools.lru_cache(maxsize=4096)
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(func)


@functools.lru_cache(maxsize=4096)
def _simple_parameters(func: Callable[..., Any]) -> tuple[tuple[str, ...], frozenset[str]] | None:
    """For a signature of plain parameters only (no *args, **kwargs, positional- or
    keyword-only): their names and the required ones, so binding is a zip. Else None."""
    params = _signature(func).parameters.values()
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None
    return (tuple(p.name for p in params),
            frozenset(p.name for p in params if p.default is inspect.Parameter.empty))


def default_task_name(func: Callable[..., Any]) -> str:
    """``module.qualname``: the name RQ already stores for a function."""
    return f"{func.__module__}.{func.__qualname__}"


@dataclasses.dataclass(frozen=True)
class Task:
    """A registered task: its function and the defaults every job of it starts with."""

    name: str
    func: Callable[..., Any]
    queue: str = "default"
    max_attempts: int = 1
    retry_intervals: tuple[float, ...] = ()
    aliases: tuple[str, ...] = ()
    #: Seconds a job of this task may run when the job sets no limit itself (None: the
    #: worker's default).
    timeout: float | None = None

    @property
    def signature(self) -> inspect.Signature:
        return _signature(self.func)

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]
             ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Map positional args to keyword args by the function's signature.

        Positional args that only a ``*args`` parameter can take stay positional.
        """
        fast = _simple_parameters(self.func)
        if fast is not None and len(args) <= len(fast[0]):
            names, required = fast
            quick = dict(zip(names, args, strict=False))
            if not quick.keys() & kwargs.keys() and kwargs.keys() <= set(names):
                quick.update(kwargs)
                if required <= quick.keys():
                    return (), quick
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise UnsupportedValueError(f"arguments do not fit {self.name}{self.signature}: {exc}",
                                        task=self.name) from exc
        out_args: tuple[Any, ...] = ()
        out_kwargs: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                out_args = tuple(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                out_kwargs.update(value)
            elif kind is inspect.Parameter.POSITIONAL_ONLY:
                raise UnsupportedValueError(
                    f"{self.name}: positional-only parameter {name!r} cannot be passed by name",
                    task=self.name)
            else:
                out_kwargs[name] = value
        if out_args:
            # Keep order: everything before *args must stay positional too.
            return tuple(bound.args), dict(bound.kwargs)
        return (), out_kwargs


class TaskRegistry:
    """Tasks by name. ``@registry.task`` hands the function back unchanged, so existing
    ``queue.enqueue(func, ...)`` call sites keep working and resolve to the same name."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._names: dict[str, str] = {}  # name or alias -> canonical name

    @overload
    def task(self, func: F) -> F: ...

    @overload
    def task(self, *, name: str | None = None, queue: str = "default", max_attempts: int = 1,
             backoff: Backoff = 0.0, aliases: Iterable[str] = (),
             timeout: float | None = None) -> Callable[[F], F]: ...

    def task(self, func: Callable[..., Any] | None = None, *, name: str | None = None,
             queue: str = "default", max_attempts: int = 1, backoff: Backoff = 0.0,
             aliases: Iterable[str] = (), timeout: float | None = None) -> Any:
        """Register a function as a task (usable bare or with options)."""

        def decorate(f: F) -> F:
            self.register(f, name=name, queue=queue, max_attempts=max_attempts, backoff=backoff,
                          aliases=aliases, timeout=timeout)
            return f

        return decorate(func) if func is not None else decorate

    def register(self, func: Callable[..., Any], *, name: str | None = None,
                 queue: str = "default", max_attempts: int = 1, backoff: Backoff = 0.0,
                 aliases: Iterable[str] = (), timeout: float | None = None) -> Task:
        """Register ``func``. ``backoff`` is the base of an exponential wait (seconds) or the
        explicit list of waits between attempts. ``timeout``: seconds a job of it may run
        unless the job sets its own limit (RQ's job timeout)."""
        if max_attempts < 1:
            raise ValueError("max_attempts counts executions and must be at least 1")
        if isinstance(backoff, int | float):
            intervals = exponential_intervals(float(backoff), max_attempts - 1)
        else:
            intervals = tuple(float(i) for i in backoff)
        task = Task(name=name or default_task_name(func), func=func, queue=queue,
                    max_attempts=max_attempts, retry_intervals=intervals,
                    aliases=tuple(aliases), timeout=timeout)
        for key in (task.name, *task.aliases):
            if key in self._names:
                raise DuplicateTaskError(f"task name {key!r} is already registered",
                                         existing=self._names[key])
        self._tasks[task.name] = task
        for key in (task.name, *task.aliases):
            self._names[key] = task.name
        return task

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, name: str) -> Task | None:
        canonical = self._names.get(name)
        return self._tasks[canonical] if canonical else None

    def resolve(self, task: str | Callable[..., Any], *, job_id: str | None = None) -> Task:
        """The task for a name, an alias or a registered function."""
        name = task if isinstance(task, str) else default_task_name(task)
        found = self.get(name)
        if found is None and not isinstance(task, str):
            found = next((t for t in self._tasks.values() if t.func is task), None)
        if found is None:
            raise UnknownTaskError(f"task {name!r} is not in the registry"
                                   + self.suggestion(name), job_id=job_id)
        return found

    def suggestion(self, name: str) -> str:
        """A "did you mean" tail for an unknown name, or ''."""
        close = difflib.get_close_matches(name, list(self._names), n=3, cutoff=0.6)
        tail = name.rsplit(".", 1)[-1]
        close += [n for n in self._names if n.rsplit(".", 1)[-1] == tail and n not in close]
        return f"; did you mean {', '.join(repr(c) for c in close[:3])}?" if close else ""

    def make_record(self, task: str | Callable[..., Any], args: Sequence[Any] = (),
                    kwargs: Mapping[str, Any] | None = None, *, job_id: str | None = None,
                    job_key: str | None = None, queue: str | None = None,
                    run_at: dt.datetime | None = None, priority: int | None = None,
                    origin: str = "") -> JobRecord:
        """Build the record of a new job, checking that every argument can be carried."""
        resolved = self.resolve(task)
        bound_args, bound_kwargs = resolved.bind(args, kwargs or {})
        record = JobRecord(
            id=job_id or new_job_id(), task=resolved.name, args=bound_args, kwargs=bound_kwargs,
            queue=queue or resolved.queue, priority=priority or 0, run_at=run_at,
            max_attempts=resolved.max_attempts, retry_intervals=resolved.retry_intervals,
            job_key=job_key, origin=origin, created_at=utcnow())
        problems = codec.check(bound_args, "args") if bound_args else []
        try:
            # The kwargs' check is their encoding, kept in the record: the backend that writes
            # the job needs it again (one encode a job on the producer's path, not two).
            record.encoded_kwargs()
        except UnsupportedValueError as exc:
            problems.append(exc.message)
        if problems:
            raise UnsupportedValueError("; ".join(problems), task=resolved.name)
        return record

    def normalize(self, record: JobRecord) -> JobRecord:
        """Bind a stored job's positional args to names and use the canonical task name, so the
        same job read from any backend has the same digest. Unknown tasks are left as they are."""
        task = self.get(record.task)
        if task is None or record.problem:
            return record
        if not record.args and task.name == record.task:
            return record
        try:
            args, kwargs = task.bind(record.args, record.kwargs)
        except UnsupportedValueError:
            return record.replace(task=task.name)
        if record.args and not args:
            # Remember which names came from positional args, in order, so a backend that has
            # positional args (RQ) can write the job back as its producer wrote it.
            positional = [name for name in kwargs if name not in record.kwargs]
            return record.replace(task=task.name, args=args, kwargs=kwargs,
                                  native={**record.native, "positional": positional})
        return record.replace(task=task.name, args=args, kwargs=kwargs)
