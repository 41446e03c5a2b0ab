"""Testing helpers for applications that use queue-cutover, and for adapter authors.

- the pytest plugin (fixtures ``cutover_backend``, ``cutover_database_url``,
  ``cutover_redis_url``) is installed with the package;
- :func:`assert_parity` runs a task on every backend and fails on any difference;
- :func:`assert_native_parity` runs it under the cutover worker and under each backend's own
  worker (procrastinate's on ``make_app``, RQ's ``SimpleWorker``) and fails on any difference;
- :mod:`cutover.testing.contract` is the contract suite every adapter must pass.
"""

from cutover.testing.native import assert_native_parity
from cutover.testing.parity import ParityError, assert_parity

__all__ = ["ParityError", "assert_native_parity", "assert_parity"]
