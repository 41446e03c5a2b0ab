"""``cutover verify``: prove every job of the ledger ran once, waits to, or is named."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cutover.cli.context import Context, emit, opened
from cutover.verify import verify as run_verify


@click.command()
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the full JSON report here (--json prints it "
                                 "on stdout; nothing is written unless asked).")
@click.pass_obj
def verify(ctx: Context, report_path: Path | None) -> None:
    """Prove that every job of the ledger between --source and --target (moved by a drain, or
    accepted by the Router in a staged cut-over) ran exactly once, failed for good, or waits
    where a worker runs it in the current phase. Lists every lost, duplicated (ran twice),
    mismatched (with the fields), unaccounted (a copy gone with no record of how) and pending
    job by id. A job counts as run only on evidence (the fence's finished claim, the backend's
    own record); a copy deleted since counts as "finished, since deleted" only when its
    backend's records say it ended first.

    Exit 0 only when clean; 1 when something was lost, duplicated, altered or unaccounted; 3
    when moves are still in flight (re-run the drain first), or when nothing was ever moved
    from --source to --target (wrong URL, database number, or the two swapped).
    """
    ctx.need("source", "target")
    assert ctx.source is not None and ctx.target is not None
    control = ctx.control_plane()
    control.require()
    with opened(ctx.source, ctx.target) as (source, target):
        result = run_verify(source, ctx.source, target, ctx.target, control)
    control.close()
    doc = result.as_dict()
    if report_path is not None:
        report_path.write_text(json.dumps(doc, default=str, indent=2))
        doc["report"] = str(report_path)
    emit(ctx, doc, result.summary()
         + (f"\n  report: {report_path}" if report_path is not None else ""))
    if result.failed:
        raise click.exceptions.Exit(1)
    if not result.clean:
        raise click.exceptions.Exit(3)
