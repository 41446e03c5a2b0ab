"""Held jobs are visible (status, verify's `stuck`) and `cutover release` gives them back, on
real RQ and procrastinate, never while their drain runs and never a job already put."""

from __future__ import annotations

import json
import os

import pytest
import redis
import rq
from click.testing import CliRunner

from cutover import adapters
from cutover.cli import cli
from cutover.control import ControlPlane, backend_key
from cutover.held import drain_owner
from cutover.record import JobState
from cutover.testing import tasks
from cutover.testing.tasks import registry
from tests.integration.drain_helpers import APP, invoke, invoke_json, store_key

pytestmark = [pytest.mark.rq, pytest.mark.pg]


def test_stuck_jobs_are_shown_reported_and_released_on_the_operators_word(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    skey, tkey = store_key(rq_url), store_key(pg_url)  # how the ledger names the stores
    conn = redis.Redis.from_url(rq_url)
    queue = rq.Queue("default", connection=conn)
    ids = [queue.enqueue(tasks.add, i, 1).id for i in range(6)]
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    control = ControlPlane(pg_url)
    # A drain that died: it had taken four jobs and put one of them (the ledger says moved).
    control.start_run("drain-dead", "drain", skey, tkey, {})
    taken = source.take(ids[:4], drain_owner(tkey)).taken
    put = registry.normalize(taken[3]).replace(state=JobState.QUEUED, holder=None)
    target.put([put])
    control.record([put], state="moved", source=skey, target=tkey, run_id="drain-dead")

    code, status = invoke_json(rq_url, pg_url, "status")
    assert code == 0
    assert status["backends"][backend_key(rq_url)]["default"]["held"] == 4
    assert status["backends"][backend_key(rq_url)]["default"]["scheduled"] == 0
    assert status["backends"][backend_key(rq_url)]["default"]["waiting"] == 2

    code, verdict = invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)
    assert code == 3 and not verdict["clean"], verdict
    assert sorted(j["id"] for j in verdict["stuck"]) == sorted(ids[:4])
    assert all(j["holder"] == drain_owner(tkey) for j in verdict["stuck"])

    # While a drain of that pair is alive (it holds the pair lock), nothing is given back.
    alive = ControlPlane(pg_url)
    assert alive.lock_pair(skey, tkey)
    refused = invoke(rq_url, pg_url, "release", "--run", "drain-dead", "--yes")
    assert refused.exit_code == 3 and "is running" in refused.output
    code, stale = invoke_json(rq_url, pg_url, "release", "--all-stale", "--yes")
    assert code == 3 and stale["released"] == [] and len(stale["kept"]) == 4
    assert sum(per[JobState.HELD] for per in source.counts().values()) == 4
    alive.unlock_pair(skey, tkey)
    alive.close()

    code, dry = invoke_json(rq_url, pg_url, "release", "--run", "drain-dead", "--dry-run")
    assert code == 3 and sorted(j["id"] for j in dry["released"]) == sorted(ids[:3])
    assert sum(per[JobState.HELD] for per in source.counts().values()) == 4  # dry: unchanged

    # Without --target, the ledger alone says the fourth one was put: kept all the same.
    nodest = CliRunner().invoke(cli, ["--app", APP, "--source", rq_url, "--control", pg_url,
                                      "--json", "release", "--run", "drain-dead", "--dry-run"])
    assert nodest.exit_code == 3 and "is on" in json.loads(nodest.stdout)["kept"][0]["reason"]
    assert f"is on {pg_url} already" in json.loads(nodest.stdout)["kept"][0]["reason"]  # a URL

    code, done = invoke_json(rq_url, pg_url, "release", "--run", "drain-dead", "--yes")
    assert code == 3, done  # the one already put is kept: giving it back would run it twice
    assert [j["id"] for j in done["kept"]] == [ids[3]]
    assert "re-run that drain" in done["kept"][0]["reason"]
    listed = [i.decode() for i in conn.lrange("rq:queue:default", 0, -1)]
    assert sorted(listed) == sorted(ids[:3] + ids[4:])
    # Given back means runnable again by a plain RQ worker.
    rq.SimpleWorker([queue], connection=conn).work(burst=True)
    assert sorted(c[1]["a"] for c in tasks.calls if c[0] == "add") == [0, 1, 2, 4, 5]

    # The drain of that pair finishes the one that was put; then nothing is stuck.
    code, report = invoke_json(rq_url, pg_url, "drain", "--yes")
    assert code == 0 and report["recovered"] == 1, report
    code, verdict = invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)
    assert code == 0 and verdict["stuck"] == [], verdict
    assert conn.keys("cutover:held:*") == []
    control.close()
    source.close()
    target.close()


def test_release_gives_procrastinate_jobs_back_with_their_schedule(
        urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    pg = adapters.open_backend(pg_url)
    records = [registry.make_record(tasks.add, (i, 1)) for i in range(3)]
    pg.put(records)
    before = {r.id: r.run_at for r in pg.snapshot()}
    pg.take([r.id for r in records], drain_owner(store_key(rq_url)))
    # A drain that died before it moved anything: the ledger has no history for the pair, and
    # verify's refusal names the stuck jobs all the same.
    said = invoke(pg_url, rq_url, "verify", "--report", os.devnull)
    assert said.exit_code == 3 and "nothing was moved" in said.output
    assert "3 job(s) held by no running drain" in said.output
    assert all(repr(r.id) in said.output for r in records)
    code, done = invoke_json(pg_url, rq_url, "release", "--all-stale", "--yes")
    assert code == 0 and len(done["released"]) == 3, done
    after = {r.id: (r.state, r.run_at, r.holder) for r in pg.snapshot()}
    assert after == {i: (JobState.QUEUED, run_at, None) for i, run_at in before.items()}
    pg.close()


def test_release_needs_exactly_one_selection(urls: tuple[str, str]) -> None:
    rq_url, pg_url = urls
    assert invoke(rq_url, pg_url, "release", "--yes").exit_code == 2
    assert invoke(rq_url, pg_url, "release", "--run", "x", "--all-stale", "--yes"
                  ).exit_code == 2
    assert invoke(rq_url, pg_url, "release", "--run", "no-such-run", "--yes").exit_code == 2
