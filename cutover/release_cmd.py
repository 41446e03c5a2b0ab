"""`cutover release`: give held jobs back to their source lists, on an operator's word."""

from __future__ import annotations

import click

from cutover import stores
from cutover.cli import Context, cli, emit, fail
from cutover.commands import confirm, opened
from cutover.errors import ConfigurationError, CutoverError
from cutover.held import release as run_release


@cli.command()
@click.option("--run", "run_id", default=None, metavar="RUN",
              help="Give back the jobs held for this drain run's pair (its run id, as the "
                   "drain prints it: [run drain-...]).")
@click.option("--all-stale", is_flag=True,
              help="Give back every job on --source held by no running drain.")
@click.option("--dry-run", is_flag=True, help="List what would be given back; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def release(ctx: Context, run_id: str | None, all_stale: bool, dry_run: bool,
            yes: bool) -> None:
    """Give jobs a drain holds on --source back to where it took them from (queue list,
    scheduled or deferred registry), so the source's workers run them again.

    A drain holds the jobs it moves; killed, it leaves them held until the next drain of the
    same pair moves them. Use this when there will be no such drain. Refused (exit 3) while
    that drain runs. A job the ledger says was put on the target is kept (the drain of that
    pair finishes it); give --target to check the target for jobs caught mid-put.

    Exit 0 when every selected job was given back; 3 when some were kept (named, with why).
    """
    try:
        if (run_id is None) == (not all_stale):
            raise ConfigurationError("say which held jobs: --run RUN or --all-stale")
        ctx.need("source")
        assert ctx.source is not None
        control = ctx.control_plane()
        control.require()
        urls = [ctx.source] + ([ctx.target] if ctx.target else [])
        with opened(*urls) as backends:
            if not dry_run:
                confirm(ctx, yes, f"Give back held jobs on {backends[0].url}?")
            # The runs, the ledger and the holders of held jobs name stores by identity.
            target_key = (stores.distinct(backends[0], backends[1], "release")[1].key
                          if ctx.target else None)
            report = run_release(
                backends[0], backends[0].identity().key, control, run_id=run_id,
                target=backends[1] if ctx.target else None, target_key=target_key,
                dry_run=dry_run)
        control.close()
    except CutoverError as exc:
        fail(exc)
    verb = "would give back" if dry_run else "gave back"
    lines = [f"{verb} {len(report.released)} held job(s)"
             + (": " + ", ".join(repr(j["id"]) for j in report.released[:20])
                if report.released else "")]
    for job in report.kept:
        lines.append(f"kept held: {job['id']!r}: {job['reason']}")
    emit(ctx, report.as_dict(), "\n".join(lines))
    if report.kept:
        raise click.exceptions.Exit(3)
