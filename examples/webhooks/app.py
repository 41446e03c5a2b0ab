"""The application's tasks, registered once in a TaskRegistry.

The decorator hands the function back unchanged: the app's existing ``queue.enqueue(...)`` call
sites keep working, and jobs RQ already stored under ``examples.webhooks.app.process_event``
resolve to the same task.
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading

from cutover import TaskRegistry

registry = TaskRegistry()

_lock = threading.Lock()
processed: dict[str, str] = {}


@registry.task(queue="webhooks", max_attempts=5, backoff=2.0)
def process_event(event_id: str, kind: str, amount: decimal.Decimal,
                  received_at: dt.datetime) -> str:
    """Apply one Stripe event to the ledger of the shop (here: a dict)."""
    if kind not in ("charge.succeeded", "charge.refunded", "invoice.paid"):
        raise ValueError(f"unsupported event kind {kind!r}")
    sign = -1 if kind == "charge.refunded" else 1
    entry = f"{received_at:%Y-%m-%d} {kind} {sign * amount:+.2f}"
    with _lock:
        processed[event_id] = entry
    return entry


@registry.task(queue="emails")
def send_receipt(event_id: str, to: str) -> None:
    """Pretend to e-mail a receipt."""
    return None
