"""``cutover init``: create the control schema (and Procrastinate's) where it is absent."""

from __future__ import annotations

import click

from cutover import adapters
from cutover.cli.context import Context, confirm, emit, opened


@click.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Say what would be created; change nothing.")
@click.pass_obj
def init(ctx: Context, yes: bool, dry_run: bool) -> None:
    """Create the control schema (ledger, phase, runs) and Procrastinate's schema when absent.

    Idempotent and safe to run from many processes at once. The control schema is named by
    CUTOVER_SCHEMA (default: cutover) in the PostgreSQL side's database (or --control).
    """
    control = ctx.control_plane()
    if dry_run:
        present = control.initialized()
        emit(ctx, {"control": repr(control), "exists": present, "dry_run": True},
             f"{control!r}: {'exists already' if present else 'would be created'}")
        return
    confirm(ctx, yes, f"Create the control schema in {control!r}?")
    created = control.init()
    pg = [u for u in (ctx.source, ctx.target) if u and adapters.split(u)[0] ==
          "procrastinate"]
    with opened(*pg):  # opening a procrastinate backend applies its schema when absent
        pass
    control.close()
    emit(ctx, {"control": repr(control), "created": created},
         f"{'created' if created else 'already there'}: {control!r}")
