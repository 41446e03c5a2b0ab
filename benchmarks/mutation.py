"""Mutation testing of the proof's own code (scripts/mutate): do the tests fail when it is wrong?

For each group of benchmarks/mutation.toml, cosmic-ray (pinned in constraints.txt) makes every
mutant of the named functions, one at a time, and runs the group's fast tests against it; a
mutant the tests do not fail on "survived". take.lua gets the hand-made mutants listed there.

Everything happens in a throw-away copy of the working tree (cosmic-ray edits the files it
mutates in place), imported first through PYTHONPATH, so the worktree is never touched and a
drain the tests start in a child process runs the mutant too. Servers: CUTOVER_TEST_DATABASE_URL
and CUTOVER_TEST_REDIS_URL (required: starting embedded servers per mutant would take minutes).

    python -m benchmarks.mutation [--group NAME]... [--json PATH] [--keep]
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import glob
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "benchmarks" / "mutation.toml"


def copy_tree(dest: Path) -> None:
    """The working tree's files (tracked and new, not ignored) into ``dest``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def annotations(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the module's annotations are: mutants there change nothing (``from __future__
    import annotations`` leaves them unevaluated), so they are not run."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node.returns)
        elif isinstance(node, ast.arg | ast.AnnAssign):
            found.append(node.annotation)
        for ann in filter(None, found):
            out.append(((ann.lineno, ann.col_offset),
                        (ann.end_lineno or ann.lineno, ann.end_col_offset or 0)))
    return out


def spans(path: Path, names: list[str]) -> list[tuple[int, int]]:
    """Line spans (first, last) of the named functions ("Class.method"), "*" for the module."""
    if names == ["*"]:
        return [(1, 10**9)]
    tree = ast.parse(path.read_text())
    found: dict[str, tuple[int, int]] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found[name] = (first, child.end_lineno or child.lineno)
                if isinstance(child, ast.ClassDef):
                    walk(child, f"{name}.")

    walk(tree, "")
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{path}: no function {', '.join(missing)} (update mutation.toml)")
    return [found[n] for n in names]


def test_command(work: Path, tests: list[str], timeout: float) -> str:
    """pytest on the group's tests, interrupted (so it cleans up its databases) before
    cosmic-ray's own timeout kills it."""
    args: list[str] = []
    for item in tests:
        matched = sorted(glob.glob(str(work / item.split("::")[0])))
        if item.startswith("tests/") and not matched:
            print(f"  (no tests match {item}; skipped)", file=sys.stderr)
            continue
        args.append(item)
    return (f"timeout -k 10 -s INT {int(timeout - 20)} {shlex.quote(sys.executable)} -m pytest "
            f"-x -q -p no:cacheprovider {' '.join(shlex.quote(a) for a in args)}")


def environment(work: Path) -> dict[str, str]:
    paths = [work, work / "adapters" / "rq", work / "adapters" / "procrastinate"]
    # CI=1: a test server that is missing fails the tests instead of skipping them (a skipped
    # test would let a mutant "survive" for nothing).
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)),
            "PYTHONDONTWRITEBYTECODE": "1", "CI": "1"}


def baseline(command: str, work: Path) -> float:
    started = time.monotonic()
    done = subprocess.run(command, shell=True, cwd=work, env=environment(work),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the tests fail without any mutant; fix them first:\n{command}\n"
                         f"{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return time.monotonic() - started


def run_group(group: dict[str, Any], settings: dict[str, Any], work: Path,
              count_only: bool = False, share: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """The group's mutants in this share (every n-th, from k), run in the copy ``work``."""
    from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-untyped]
    from cosmic_ray.work_item import (  # type: ignore[import-untyped]
        TestOutcome,
        WorkerOutcome,
        WorkResult,
    )

    name = group["name"]
    sample = int(group.get("sample", 0))
    command = test_command(work, group["tests"], settings["timeout"])
    took = group.get("baseline", 0.0)
    modules = {work / path: spans(work / path, names)
               for path, names in group["functions"].items()}
    config = work / f"mutation-{name}.toml"
    session = work / f"mutation-{name}.sqlite"
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps([str(p) for p in modules])}\n"
        f"timeout = {float(settings['timeout'])}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n")
    cosmic = [sys.executable, "-m", "cosmic_ray.cli"]
    subprocess.run([*cosmic, "init", str(config), str(session)], cwd=work, check=True)
    excluded = [re.compile(p) for p in settings["exclude-operators"]]
    typing = {path: annotations(path) for path in modules}
    with use_db(str(session), WorkDB.Mode.open) as db:
        skip: list[str] = []
        candidates: list[str] = []
        for item in sorted(db.work_items, key=lambda i: (str(i.mutations[0].module_path),
                                                          tuple(i.mutations[0].start_pos),
                                                          i.mutations[0].operator_name,
                                                          i.mutations[0].occurrence)):
            for m in item.mutations:
                path, at = Path(m.module_path), tuple(m.start_pos)
                inside = any(a <= at[0] <= b for a, b in modules[path])
                typed = any(a <= at < b for a, b in typing[path])
                if (not inside or typed
                        or any(p.search(m.operator_name) for p in excluded)):
                    skip.append(item.job_id)
                    break
            else:
                candidates.append(item.job_id)
        if sample and sample < len(candidates):  # a seeded sample, the same in every share
            chosen = set(random.Random(f"{name}:{sample}").sample(candidates, sample))
            skip += [i for i in candidates if i not in chosen]
            candidates = [i for i in candidates if i in chosen]
        skip += [i for n, i in enumerate(candidates) if n % share[1] != share[0]]
        db.set_multiple_results(skip, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
        pending = db.num_work_items - len(skip)
    if count_only:
        print(f"[{name}] {pending} mutants", file=sys.stderr)
        return {"group": name, "mutants": pending}
    print(f"[{name}] share {share[0] + 1}/{share[1]}: {pending} mutants (baseline tests "
          f"{took:.1f} s): {command}", file=sys.stderr)
    started = time.monotonic()
    subprocess.run([*cosmic, "exec", str(config), str(session)], cwd=work,
                   env=environment(work), check=True)
    survivors, counts = [], {"killed": 0, "survived": 0, "incompetent": 0, "timeout": 0}
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            m = item.mutations[0]
            if result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                survivors.append({"module": str(Path(m.module_path).relative_to(work)),
                                  "line": m.start_pos[0], "operator": m.operator_name,
                                  "occurrence": m.occurrence, "diff": result.diff})
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
            else:
                counts["killed"] += 1
                if result.output and "Timeout" in result.output:
                    counts["timeout"] += 1
    return {"group": name, "tests": command, "mutants": pending, "sampled": sample or None,
            **counts,
            "seconds": round(time.monotonic() - started), "survivors": survivors}


def run_lua(lua: dict[str, Any], settings: dict[str, Any], work: Path,
            share: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    path = work / lua["file"]
    original = path.read_text()
    command = test_command(work, lua["tests"], settings["timeout"])
    took = lua.get("baseline", 0.0)
    print(f"[lua] share {share[0] + 1}/{share[1]} (baseline tests {took:.1f} s): {command}",
          file=sys.stderr)
    counts = {"killed": 0, "survived": 0}
    survivors = []
    started = time.monotonic()
    for what, old, new in lua["mutants"][share[0]::share[1]]:
        if original.count(old) != 1:
            raise SystemExit(f"{lua['file']}: the mutant {what!r} no longer applies "
                             "(its text must occur once; update mutation.toml)")
        path.write_text(original.replace(old, new))
        try:
            done = subprocess.run(command, shell=True, cwd=work, env=environment(work),
                                  capture_output=True, text=True,
                                  timeout=settings["timeout"])
            killed = done.returncode != 0
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            path.write_text(original)
        counts["killed" if killed else "survived"] += 1
        print(f"  {'killed' if killed else 'SURVIVED'}: {what}", file=sys.stderr)
        if not killed:
            survivors.append({"module": lua["file"], "mutant": what, "old": old, "new": new})
    return {"group": "rq-take.lua", "tests": command, "mutants": sum(counts.values()), **counts,
            "seconds": round(time.monotonic() - started), "survivors": survivors}


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One group's result from its shares."""
    out = dict(parts[0])
    for key in ("mutants", "killed", "survived", "incompetent", "timeout"):
        if key in out:
            out[key] = sum(p.get(key, 0) for p in parts)
    out["seconds"] = max(p["seconds"] for p in parts)
    out["survivors"] = [s for p in parts for s in p["survivors"]]
    return out


def save(doc: dict[str, Any], path: Path | None) -> None:
    """Write the results so far (a long run keeps what it found if it is stopped)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", action="append", default=[],
                        help="only this group (repeatable; 'lua' for take.lua)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the working copy")
    parser.add_argument("--count", action="store_true", help="count the mutants, run nothing")
    parser.add_argument("--sample", type=int, default=0,
                        help="run a seeded sample of this many mutants per group (0: all)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="mutants run at once, each in its own copy (default 2)")
    args = parser.parse_args(argv)
    for var in ("CUTOVER_TEST_DATABASE_URL", "CUTOVER_TEST_REDIS_URL"):
        if not os.environ.get(var):
            raise SystemExit(f"set {var}: each mutant runs the tests against running servers")
    settings = tomllib.loads(CONFIG.read_text())
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    doc = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip(),
           "jobs": args.jobs, "groups": results}
    groups = [g for g in settings["group"] if not args.group or g["name"] in args.group]
    for group in groups:
        group.setdefault("sample", args.sample)
    lua = settings["lua"] if not args.group or "lua" in args.group else None
    copies = [Path(tempfile.mkdtemp(prefix="cutover-mutate-")) for _ in range(args.jobs)]
    try:
        for copy in copies:
            copy_tree(copy)
        work = copies[0]
        if args.count:
            for group in groups:
                run_group(group, settings, work, count_only=True)
            return 0
        # Every group's tests must pass unmutated before any mutant runs.
        for group in [*groups, *([lua] if lua else [])]:
            group["baseline"] = baseline(test_command(work, group["tests"], settings["timeout"]),
                                         work)
        shares: list[list[dict[str, Any]]] = [[] for _ in copies]
        lock = threading.Lock()

        def done(k: int, result: dict[str, Any]) -> None:
            with lock:  # save each group once all its shares are in (a stopped run keeps them)
                shares[k].append(result)
                results[:] = [merge(list(p)) for p in zip(*shares, strict=False)]
                save(doc, args.json)

        def worker(k: int) -> None:
            for group in groups:
                done(k, run_group(group, settings, copies[k], share=(k, len(copies))))
            if lua:
                done(k, run_lua(lua, settings, copies[k], share=(k, len(copies))))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(copies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        doc["seconds"] = round(time.monotonic() - started)
        save(doc, args.json)
    finally:
        if not args.keep:
            for copy in copies:
                shutil.rmtree(copy, ignore_errors=True)
    print("| group | mutants | killed | survived | incompetent | score | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        scored = r["killed"] + r["survived"]
        score = f"{100 * r['killed'] / scored:.1f}%" if scored else "-"
        print(f"| {r['group']} | {r['mutants']} | {r['killed']} | {r['survived']} | "
              f"{r.get('incompetent', 0)} | {score} | {r['seconds']} |")
    for r in results:
        for s in r["survivors"]:
            where = f"{s['module']}:{s.get('line', '')}"
            print(f"\nSURVIVED {r['group']} {where} {s.get('operator', s.get('mutant'))}")
            print(s.get("diff") or f"- {s['old']}\n+ {s['new']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
