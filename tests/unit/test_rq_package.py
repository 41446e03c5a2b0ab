"""The shape of cutover_rq: modules that import alone, and key names spelled in keys.py only
(and spelled as RQ spells them)."""

from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import cutover_rq
import pytest
import redis
import rq
from cutover_rq import keys
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result

RQ_DIR = Path(cutover_rq.__file__).parent
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(RQ_DIR)]))
_KEY_LITERAL = re.compile(r"^(rq|cutover):\S*$")  # "rq:results (RQ's worker)" is prose


def test_the_split_modules_are_there() -> None:
    assert {"backend", "connection", "jobhash", "keys", "location", "working"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_each_rq_module_imports_alone(module: str) -> None:
    """In a fresh interpreter, so an import cycle cannot hide behind a module already loaded."""
    done = subprocess.run([sys.executable, "-c", f"import cutover_rq.{module}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _key_literals(path: Path) -> list[str]:
    """String constants (f-string pieces too, docstrings not) that start like a Redis key."""
    tree = ast.parse(path.read_text("utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)
            and id(node) not in docstrings
            and _KEY_LITERAL.match(node.value if isinstance(node.value, str)
                                   else node.value.decode("latin-1"))]


@pytest.mark.parametrize("module", [m for m in MODULES if m != "keys"])
def test_no_key_names_outside_keys_module(module: str) -> None:
    assert _key_literals(RQ_DIR / f"{module}.py") == []


def test_the_check_sees_a_key_literal(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""rq:job:{id} in a docstring is fine."""\n'
                      'x = f"rq:job:{1}"\ny = b"cutover:paused"\n')
    assert sorted(map(str, _key_literals(sample))) == ["b'cutover:paused'", "rq:job:"]


def test_lua_builds_keys_only_from_named_prefixes() -> None:
    used: set[str] = set()
    for script in sorted((RQ_DIR / "lua").glob("*.lua")):
        code = "\n".join(line.split("--", 1)[0] for line in script.read_text().splitlines())
        used |= set(re.findall(r"'((?:rq|cutover):[^']*)'", code))
    assert used, "no key prefix found in lua/: the pattern is stale"
    assert used <= keys.LUA_PREFIXES, sorted(used - keys.LUA_PREFIXES)


def _str(key: str | bytes) -> str:
    return key.decode() if isinstance(key, bytes) else key


def test_key_names_are_rqs_own() -> None:
    """RQ's workers must see what the adapter writes: the names come from RQ's own classes."""
    client = redis.Redis()  # no connection is made: only key names are asked
    queue = rq.Queue("q", connection=client)
    job = rq.job.Job(id="x", connection=client)
    assert keys.job("x") == _str(rq.job.Job.key_for("x")) == _str(job.key)
    assert keys.dependents("x") == _str(job.dependents_key)
    assert keys.queue("q") == _str(queue.key)
    assert keys.intermediate("q") == f"{_str(queue.key)}:intermediate"
    assert rq.Queue.redis_queues_keys == keys.QUEUES
    assert rq.Worker.redis_workers_keys == keys.WORKERS
    assert rq.Worker.redis_worker_namespace_prefix == keys.WORKER_PREFIX
    assert keys.worker("w") == keys.worker("rq:worker:w") == "rq:worker:w"
    assert keys.results("x") == _str(Result.get_key("x"))
    for kind, registry in [("wip", StartedJobRegistry), ("finished", FinishedJobRegistry),
                           ("failed", FailedJobRegistry), ("deferred", DeferredJobRegistry),
                           ("scheduled", ScheduledJobRegistry),
                           ("canceled", CanceledJobRegistry)]:
        expected = _str(registry("q", connection=client).key)
        if kind == "wip" and expected.startswith("rq:started:"):
            continue  # rq 2.x names its started registry otherwise; the adapter reads rq 3's
        assert keys.registry(kind, "q") == expected
