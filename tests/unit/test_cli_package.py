"""The shape of the command line: modules without cycles, one error funnel, --json anywhere."""

from __future__ import annotations

import json
import logging
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cutover.cli
from cutover import InMemoryBackend, logs
from cutover.cli import context as main
from cutover.cli.context import Context, CutoverGroup
from cutover.cli.main import cli
from cutover.errors import PreconditionError
from cutover.settings import Settings
from cutover.urls import hiding

CLI_DIR = Path(cutover.cli.__file__).parent
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(CLI_DIR)]))
COMMAND_MODULES = [m for m in MODULES if m not in ("context", "main")]


def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[
        tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in sorted(group.commands.items()):
        out.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            out.extend(all_commands(command, (*prefix, name)))
    return out


def test_the_package_holds_the_expected_modules() -> None:
    assert {"context", "main"} <= set(MODULES)
    assert len(COMMAND_MODULES) >= 5  # worker, setup, inspect, move, proof


@pytest.mark.parametrize("module", MODULES)
def test_each_cli_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    # An import cycle shows as an ImportError (partially initialised module) when the cycle is
    # entered from this module first; a command module must not pull in the group either.
    code = (f"import sys, cutover.cli.{module}; "
            "print('cutover.cli.main' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(module == "main")


def test_main_adds_every_command_of_every_command_module() -> None:
    defined = set()
    for module in COMMAND_MODULES:
        mod = __import__(f"cutover.cli.{module}", fromlist=["_"])
        defined |= {id(v) for v in vars(mod).values() if isinstance(v, click.Command)}
    # (a nested group's commands, `phase show`, are reached through the group)
    assert defined and defined <= {id(c) for _, c in all_commands()}


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_no_command_catches_cutover_errors_itself(module: str) -> None:
    text = (CLI_DIR / f"{module}.py").read_text()
    assert not re.search(r"except\s*\(?[^:\n]*CutoverError", text)
    assert "fail(" not in text


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=" ".join)
def test_every_command_explains_itself_and_takes_json_after_its_name(
        path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output
    command = dict(all_commands())[path]
    assert command.help and command.help.split("\n")[0].strip() in result.output.replace(
        "\n  ", " ")


def test_the_group_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.commands:
        assert name in result.output


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_before_or_after_the_command_name(where: str) -> None:
    args = ["--source", "memory://clipkg-json", "status"]
    args = ["--json", *args] if where == "before" else [*args, "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["phase"]["phase"] == "off"
    text = CliRunner().invoke(cli, ["--source", "memory://clipkg-json", "status"])
    assert text.exit_code == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.stdout)


def test_json_after_the_name_reaches_an_error_path_command_too() -> None:
    result = CliRunner().invoke(cli, ["verify", "--json"])
    assert result.exit_code == 2
    assert "needs --source" in result.stderr
    doc = json.loads(result.stdout)  # with --json, an error is one JSON document on stdout too
    assert doc["exit_code"] == 2 and "needs --source" in doc["error"]
    assert doc["kind"] == "ConfigurationError"


def test_an_error_under_json_is_redacted_in_the_document_too() -> None:
    result = CliRunner().invoke(cli, ["--json", "--source", "redis://u:s3cr3t-pw@127.0.0.1:1/0",
                                      "--target", "memory://clipkg-x", "phase", "show"])
    assert result.exit_code == 2
    assert "s3cr3t-pw" not in result.output
    assert "s3cr3t-pw" not in json.loads(result.stdout)["error"]


@pytest.mark.parametrize("code", [1, 2, 3])
def test_the_funnel_turns_a_cutover_error_into_its_exit_code_redacted(code: int) -> None:
    url = "postgresql://clipkg:pa55 w0rd@db.example/app"

    @click.group(cls=CutoverGroup)
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.with_resource(hiding(url))

    @click.group()
    def nested() -> None:
        """A nested group."""

    @nested.command()
    def deep() -> None:
        """Fails deep down."""
        error = PreconditionError(f"cannot reach {url} (pa55 w0rd)")
        error.exit_code = code
        raise error

    group.add_command(nested)
    result = CliRunner().invoke(group, ["nested", "deep", "--json"])
    assert result.exit_code == code
    assert "cannot reach" in result.output
    assert "pa55" not in result.output and "w0rd" not in result.output
    assert isinstance(result.exception, SystemExit)


def _buggy_group() -> click.Group:
    url = "redis://:bug-s3cret@127.0.0.1:1/0"

    @click.group(cls=CutoverGroup)
    @click.option("--log-level", default="INFO")
    @click.pass_context
    def group(ctx: click.Context, log_level: str) -> None:
        ctx.with_resource(hiding(url))
        logs.setup(log_level)
        ctx.obj = Context(settings=Settings())

    @group.command()
    def boom() -> None:
        """Has a bug."""
        raise RuntimeError(f"a bug near {url}")

    return group


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_an_error_that_is_not_a_cutover_error_exits_2_short_redacted_no_traceback(
        as_json: bool) -> None:
    # exit 1 means "loss found": an uncaught exception must never look like it
    result = CliRunner().invoke(_buggy_group(), ["boom", *(["--json"] if as_json else [])])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "unexpected error RuntimeError: a bug near" in result.stderr
    assert "test_cli_package.py" in result.stderr and "in boom" in result.stderr  # where
    assert "Traceback" not in result.output
    assert "bug-s3cret" not in result.output
    if as_json:
        doc = json.loads(result.stdout)
        assert doc["exit_code"] == 2 and doc["kind"] == "UnexpectedError"


def test_the_traceback_of_an_unexpected_error_only_at_debug_level_and_redacted() -> None:
    result = CliRunner().invoke(_buggy_group(), ["--log-level", "DEBUG", "boom"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "RuntimeError" in result.stderr
    assert "bug-s3cret" not in result.output


def test_an_unexpected_error_in_a_real_command_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(url: str) -> None:
        raise ValueError(f"cannot parse {url}")

    monkeypatch.setattr("cutover.adapters.open_backend", broken)
    result = CliRunner().invoke(cli, ["--source", "redis://:real-s3cret@h:1/0", "status"])
    assert result.exit_code == 2, result.output
    assert "unexpected error ValueError: cannot parse redis://:***@h:1/0" in result.stderr
    assert "cutover/cli/context.py" in result.stderr  # where: our innermost frame
    assert "real-s3cret" not in result.output and "Traceback" not in result.output


def test_ctrl_c_exits_2_not_1() -> None:
    @click.group(cls=CutoverGroup)
    def group() -> None:
        pass

    @group.command()
    def wait() -> None:
        """Interrupted."""
        raise KeyboardInterrupt

    result = CliRunner().invoke(group, ["wait"])
    assert result.exit_code == 2 and "aborted" in result.stderr


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=" ".join)
def test_every_global_option_is_accepted_after_every_command_name(
        path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    for option in ("--source", "--target", "--app", "--control", "--json", "--log-level",
                   "--log-format"):
        assert option in result.output, (path, option)


def test_global_options_after_the_name_mean_what_they_mean_before_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    @click.command()
    @click.pass_obj
    def probe(ctx: Context) -> None:
        """Shows the settings."""
        seen.update(source=ctx.source, target=ctx.target, app=ctx.app, control=ctx.control,
                    json=ctx.json, level=ctx.settings.log_level,
                    fmt=ctx.settings.log_format,
                    cutover_level=logging.getLogger("cutover").level)
        raise PreconditionError("refused near redis://:after-pw@127.0.0.1:1/0 (after-pw)")

    monkeypatch.setitem(cli.commands, "probe", probe)
    main._accept_globals(probe, cli)
    result = CliRunner().invoke(cli, [
        "--source", "memory://before", "probe", "--source", "redis://:after-pw@127.0.0.1:1/0",
        "--target", "memory://t", "--app", "m:a", "--control", "postgresql://c/db", "--json",
        "--log-level", "debug", "--log-format", "json"])
    assert result.exit_code == 3, result.output
    assert seen == {"source": "redis://:after-pw@127.0.0.1:1/0", "target": "memory://t",
                    "app": "m:a", "control": "postgresql://c/db", "json": True,
                    "level": "DEBUG", "fmt": "json", "cutover_level": logging.DEBUG}
    assert "after-pw" not in result.output  # the password given after the name is hidden too
    assert json.loads(result.stdout)["exit_code"] == 3


def test_worker_takes_source_after_its_name() -> None:
    memory = InMemoryBackend("memory://clipkg-after")
    memory.flush()
    result = CliRunner().invoke(cli, ["worker", "--backend", "memory", "--source",
                                      "memory://clipkg-after", "--app",
                                      "cutover.testing.tasks:registry", "--burst",
                                      "--isolation", "thread", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["succeeded"] == 0


def test_python_dash_m_and_the_console_entry_point_agree() -> None:
    done = subprocess.run([sys.executable, "-m", "cutover", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "Exit codes" in done.stdout
    pyproject = (CLI_DIR.parents[1] / "pyproject.toml").read_text()
    assert 'cutover = "cutover.cli.main:main"' in pyproject
    from cutover.cli import main as main_module
    assert callable(main_module.main)
