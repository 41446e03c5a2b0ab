"""Testing helpers for applications that use queue-cutover, and for adapter authors.

- the pytest plugin (fixtures ``cutover_backend``, ``cutover_database_url``,
  ``cutover_redis_url``) is installed with the package;
- :func:`assert_parity` runs a task on every backend and fails on any difference;
- :mod:`cutover.testing.contract` is the contract suite every adapter must pass.
"""

from cutover.testing.parity import ParityError, assert_parity

__all__ = ["ParityError", "assert_parity"]
