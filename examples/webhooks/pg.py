"""The webhook app once the cut-over is complete: procrastinate's own worker runs its tasks.

``make_app`` registers every task of the app's registry under the name RQ stored
(``examples.webhooks.app.process_event``), on its queue, and wraps it so jobs moved from RQ,
jobs enqueued by the Router and jobs deferred here run exactly as under
``cutover worker --backend procrastinate``: the Decimal amount and the aware datetime arrive as
themselves, and each job keeps its own retry budget (``max_attempts=5, backoff=2.0`` for jobs
enqueued by the Router; an RQ ``Retry(max, interval)`` for jobs moved from RQ)::

    export DATABASE_URL=postgresql://localhost/app
    procrastinate --app examples.webhooks.pg.app worker          # procrastinate's own CLI
    procrastinate --app examples.webhooks.pg.app worker --one-shot

or from Python: ``app.run_worker(queues=["webhooks"])``. New jobs can be deferred with plain
procrastinate code, rich values included::

    with app.open():
        app.tasks["examples.webhooks.app.process_event"].defer(
            event_id="evt_1", kind="invoice.paid", amount=Decimal("9.90"), received_at=now)

(procrastinate's ``--app`` takes a dotted path, ``module.attribute``, not ``module:attribute``.)
"""

from __future__ import annotations

import os

from cutover_procrastinate import make_app

from examples.webhooks.app import registry

#: Nothing connects until a worker starts or ``app.open()`` is called.
app = make_app(registry, os.environ.get("DATABASE_URL", "postgresql://localhost/app"))
