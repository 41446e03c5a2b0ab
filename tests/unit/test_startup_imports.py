"""Start-up time, pinned without timing: what a command imports (in a fresh interpreter).

``cutover --help`` lists the commands without importing a command module or a heavy library;
``import cutover`` loads none of them either (its names are imported on first use); a worker's
``--help`` does not import procrastinate, rich or prometheus_client."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from cutover.cli.main import COMMANDS, cli

#: Libraries no `cutover --help` needs (each costs tens of milliseconds to import).
HEAVY = ("rq", "redis", "procrastinate", "psycopg", "psycopg_pool", "rich", "prometheus_client")


def imported(*argv: str, code: str = "") -> set[str]:
    """The top-level packages and cutover modules loaded by ``cutover ARGV`` (or ``code``)."""
    run = code or (f"import runpy; sys.argv = ['cutover', *{list(argv)!r}]\n"
                   "try:\n    runpy.run_module('cutover', run_name='__main__')\n"
                   "except SystemExit as exc:\n    status = exc.code\n")
    wrapper = ("import json, sys\nstatus = 0\n" + run +
               "\nsys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n"
               "sys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    names = json.loads(done.stderr.rpartition("MODULES ")[2])
    return {n.split(".")[0] for n in names} | {n for n in names if n.startswith("cutover")}


def test_cutover_help_imports_no_command_and_no_heavy_library() -> None:
    found = imported("--help")
    assert not found & set(HEAVY), sorted(found & set(HEAVY))
    commands = {n for n in found if n.startswith("cutover.cli.")} - {
        "cutover.cli.main", "cutover.cli.context"}
    assert not commands
    assert "cutover.router" not in found and "cutover.control" not in found


def test_import_cutover_loads_its_names_on_first_use() -> None:
    found = imported(code="import cutover\n")
    assert not found & set(HEAVY)
    assert "cutover.router" not in found
    found = imported(code="from cutover import Router, TaskRegistry\n")
    assert "cutover.router" in found and "psycopg" in found


def test_worker_help_needs_neither_procrastinate_nor_rich_nor_prometheus() -> None:
    found = imported("worker", "--help")
    assert "cutover.cli.worker" in found
    assert not found & {"procrastinate", "rich", "prometheus_client", "cutover.cli.inspect",
                        "cutover.cli.move", "cutover.cli.phase"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_listed_help_is_the_commands_own(name: str) -> None:
    # `cutover --help` lists COMMANDS' sentences without importing the commands: they must
    # say what each command's own help says.
    command = cli.commands[name]
    stand_in = click.Command(name, help=COMMANDS[name][2])
    assert stand_in.get_short_help_str(10_000) == command.get_short_help_str(10_000)
    module, attr, _ = COMMANDS[name]
    assert command is getattr(sys.modules[module], attr)


def test_the_group_help_is_the_same_as_with_every_command_imported() -> None:
    from click.testing import CliRunner

    lazy = CliRunner().invoke(cli, ["--help"]).output
    for name in COMMANDS:
        assert cli.commands[name] is not None  # imports it
    assert CliRunner().invoke(cli, ["--help"]).output == lazy
