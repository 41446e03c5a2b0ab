"""RQ (Redis Queue) adapter for queue-cutover."""

from cutover_rq.backend import RQBackend

__all__ = ["RQBackend"]
