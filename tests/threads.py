"""Run a callable from several threads at once (for tests of concurrent first runs)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def errors_in_threads(fn: Callable[[], object], n: int) -> list[BaseException]:
    """Call ``fn`` from ``n`` threads started together; return what they raised."""
    errors: list[BaseException] = []

    def one() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
