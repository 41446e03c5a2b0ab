"""One exception root for the whole toolkit.

Every error the toolkit raises derives from :class:`CutoverError`; driver errors (redis-py,
psycopg, procrastinate) are translated at the adapter edge with ``raise ... from exc`` so that a
caller needs to catch only this family. The docstring of each class is its default message.
"""

from __future__ import annotations

import re


class CutoverError(Exception):
    """queue-cutover failed."""

    exit_code = 2

    def __init__(self, message: str | None = None, **context: object) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.context = context
        super().__init__(self.message)

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({details})"


class ConfigurationError(CutoverError):
    """The configuration is invalid."""


class UnknownAdapterError(ConfigurationError):
    """No installed adapter handles this URL."""


class BackendUnavailableError(CutoverError):
    """The backend server could not be reached."""


class AccessRefusedError(BackendUnavailableError):
    """The server refused the connection for good (no such database or role, a password or
    address refused): retrying cannot help, so it is said at once."""


#: What a PostgreSQL server says, refusing a connection, when no retry can help (libpq's text:
#: a connection failure carries no SQLSTATE). Never a password: the server does not repeat it.
_REFUSED_FOR_GOOD = re.compile(
    r'FATAL:\s+((?:database|role) "[^"\n]*" does not exist'
    r'|password authentication failed for user "[^"\n]*"'
    r'|no pg_hba\.conf entry for [^\n]*)')


def refused_for_good(message: str) -> str | None:
    """The reason in a PostgreSQL connection error (``database "x" does not exist``) when
    retrying the connection cannot help; None for any other error (a server down, a timeout)."""
    found = _REFUSED_FOR_GOOD.search(message)
    return found.group(1).strip() if found else None


class PhaseUnknownError(BackendUnavailableError):
    """The cut-over's phase could not be read recently enough to route a job by it."""


class BackendError(CutoverError):
    """The backend answered with an error."""


class JobError(CutoverError):
    """A job could not be handled."""

    def __init__(self, message: str | None = None, *, job_id: str | None = None,
                 **context: object) -> None:
        self.job_id = job_id
        if job_id is not None:
            context = {"job_id": job_id, **context}
        super().__init__(message, **context)


class UnsupportedValueError(JobError):
    """A value cannot be carried across backends."""


class DecodeError(JobError):
    """A job payload could not be decoded."""


class QuarantinedJobError(DecodeError):
    """A job payload needs a global that is not allowed; it was quarantined, never executed."""


class UnknownTaskError(JobError):
    """The task is not in the registry."""


class DuplicateTaskError(CutoverError):
    """A task name or alias is registered twice."""


class JobConflictError(JobError):
    """A job with this id already exists with different content."""


class CapabilityError(CutoverError):
    """The backend does not support this feature."""


class PreconditionError(CutoverError):
    """A precondition refused the step."""

    exit_code = 3


class SameStoreError(ConfigurationError):
    """Source and target are the same store."""
