"""Start-up time of ``cutover`` commands, before (an older tree) and after (this one),
interleaved round by round, with procrastinate's own CLI as the reference.

    git archive OLD_COMMIT | tar -x -C /tmp/base
    .venv/bin/python -m compileall -q cutover adapters /tmp/base   # as an install would
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -m benchmarks.startup_bench \
        --base /tmp/base --pg postgresql://.../empty_db --redis redis://.../7 --rounds 15

The PostgreSQL database must hold the control schema and procrastinate's (``cutover init``),
and an empty queue: the workers run ``--burst`` / ``--one-shot`` (start, find nothing, exit).
``procrastinate_app.py`` (a plain ``procrastinate.App`` on ``--pg``) is written to a temporary
directory for procrastinate's worker. Prints the median and the best wall seconds per command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

parser = argparse.ArgumentParser()
parser.add_argument("--base", required=True, help="an extracted older tree (git archive)")
parser.add_argument("--pg", required=True)
parser.add_argument("--redis", required=True)
parser.add_argument("--rounds", type=int, default=11)
args = parser.parse_args()
PY = sys.executable
BASE = args.base
APPDIR = tempfile.mkdtemp()
with open(os.path.join(APPDIR, "procrastinate_app.py"), "w") as f:
    f.write("import procrastinate\napp = procrastinate.App(connector=procrastinate."
            f"PsycopgConnector(conninfo={args.pg!r}))\n")
BASE_ENV = {**os.environ, "PYTHONPATH": f"{BASE}:{BASE}/adapters/rq:{BASE}/adapters/procrastinate"
            f":{APPDIR}"}
NEW_ENV = {**os.environ, "PYTHONPATH": APPDIR}
PG, RQ = args.pg, args.redis
APP = "cutover.testing.tasks:registry"
cases = {
    "cutover --help": [PY, "-m", "cutover", "--help"],
    "cutover worker --help": [PY, "-m", "cutover", "worker", "--help"],
    "rq worker start (no control plane, --burst)": [
        PY, "-m", "cutover", "--source", RQ, "--app", APP, "worker", "--backend", "source",
        "--burst"],
    "procrastinate-side worker start (control plane, --burst)": [
        PY, "-m", "cutover", "--source", RQ, "--target", PG, "--app", APP, "worker",
        "--backend", "target", "--burst"],
}
ref = {
    "procrastinate --help": [PY, "-m", "procrastinate", "--help"],
    "procrastinate worker start (--one-shot)": [PY, "-m", "procrastinate", "--app",
                                                "procrastinate_app.app", "worker", "--one-shot"],
    "python -c pass": [PY, "-c", "pass"],
}
n = args.rounds


def run(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=APPDIR)
    if r.returncode != 0:
        raise SystemExit(f"{cmd} failed: {r.stderr.decode()[-500:]}")
    return time.perf_counter() - t


res: dict[tuple[str, str], list[float]] = {}
for _ in range(n):
    for name, cmd in cases.items():
        res.setdefault(("before", name), []).append(run(cmd, BASE_ENV))
        res.setdefault(("after", name), []).append(run(cmd, NEW_ENV))
    for name, cmd in ref.items():
        res.setdefault(("ref", name), []).append(run(cmd, NEW_ENV))
for (k, name), v in res.items():
    print(f"{k:6} {name:58} median {statistics.median(v):.3f} s  min {min(v):.3f} s")
