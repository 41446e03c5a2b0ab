"""Drain: move every movable job from a source backend to a target, with proof in the ledger.

Each batch goes through three steps, each one idempotent:

1. take: the jobs are moved out of reach of the source's workers and held (so none of them can
   start while it moves); the ledger gets an intent row ``moving``;
2. put: the jobs are written to the target, and their ledger rows become ``moved`` — in the same
   transaction when the target is PostgreSQL;
3. release: the held copies are removed from the source; ledger rows become ``released`` — in
   the same transaction when the source is PostgreSQL.

Killed anywhere, the next run first finishes what the ledger and the source's held jobs say was
under way, then goes on. Running jobs are never moved. Jobs that cannot move are left in place
and reported with their class and reason.

Modules: ``core`` (the :class:`Drain`: planning, passes, the reading side: classify and take),
``pipeline`` (the stages' threads), ``steps`` (put with poison isolation, release, give back),
``recovery`` (finishing an interrupted run), ``report`` (options and report), ``processes``
(a generic process group for ``--workers N``; it knows nothing of :class:`Drain`).
"""

from cutover.drain.core import Drain
from cutover.drain.report import DrainOptions, DrainReport

__all__ = ["Drain", "DrainOptions", "DrainReport"]
