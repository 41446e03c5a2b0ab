"""Stores, not URL strings: one store spelled two ways is one store (refused as source and
target, one lock, one ledger history); a store's identity survives its spellings."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from cutover_rq.store import database_of

from cutover import adapters, stores
from cutover.control import ControlPlane, backend_key
from cutover.errors import SameStoreError
from cutover.record import JobState
from cutover.testing import tasks
from cutover.testing.tasks import registry
from tests.integration.drain_helpers import invoke, invoke_json, slow_drain_in_thread

pytestmark = [pytest.mark.rq, pytest.mark.pg]
SOCKET = "/var/run/postgresql"


def respell(url: str) -> str:
    """The same store by another name: the host name instead of the address (on a TCP URL),
    the adapter's prefix, and a connection option that changes nothing about the store."""
    adapter = "rq" if url.startswith(("redis", "unix", "rq+")) else "procrastinate"
    other = url.replace("127.0.0.1", "localhost")
    other = other if other.startswith(adapter + "+") else f"{adapter}+{other}"
    option = "socket_connect_timeout=7" if adapter == "rq" else "connect_timeout=7"
    return f"{other}{'&' if '?' in other else '?'}{option}"


def as_user(url: str, user: str) -> str:
    """``url`` with another user name (and no password)."""
    head, rest = url.split("://", 1)
    return f"{head}://{user}@{rest.rsplit('@', 1)[-1]}"


def ids(url: str) -> set[str]:
    backend = adapters.open_backend(url)
    try:
        return {r.id for r in backend.snapshot()}
    finally:
        backend.close()


def fill(url: str, n: int, queue: str = "default") -> set[str]:
    backend = adapters.open_backend(url)
    try:
        return set(backend.enqueue([registry.make_record(tasks.add, (i, 1), queue=queue)
                                    for i in range(n)]))
    finally:
        backend.close()


def test_every_spelling_of_a_store_has_one_identity(cutover_redis_url: str,
                                                    cutover_database_url: str) -> None:
    spellings = {
        "redis": [cutover_redis_url, respell(cutover_redis_url),
                  "rq+" + cutover_redis_url.replace("redis://", "redis://:@")],
        "pg": [cutover_database_url, respell(cutover_database_url)],
    }
    if "@127.0.0.1:5432/" in cutover_database_url and os.path.exists(f"{SOCKET}/.s.PGSQL.5432"):
        # The same server through its unix socket (when the test server is the machine's own)
        name = cutover_database_url.rsplit("/", 1)[1]
        spellings["pg"].append(f"postgresql:///{name}?host={SOCKET}&user=postgres")
    for urls in spellings.values():
        keys = set()
        for url in urls:
            backend = adapters.open_backend(url)
            keys.add(backend.identity().key)
            assert backend.identity().url == backend.url
            backend.close()
        assert len(keys) == 1, keys
    db = database_of(cutover_redis_url)
    other_db = (re.sub(r"db=\d+", f"db={(db + 1) % 16}", cutover_redis_url)
                if "db=" in cutover_redis_url
                else f"{cutover_redis_url.rsplit('/', 1)[0]}/{(db + 1) % 16}")
    a, b = adapters.open_backend(cutover_redis_url), adapters.open_backend(other_db)
    assert a.identity().key != b.identity().key  # the db number is part of the store
    assert a.identity().key.endswith(f"/db{db}")
    pg = adapters.open_backend(cutover_database_url)
    assert pg.identity().key.startswith("postgresql:") and pg.identity().key.endswith("/public")
    for backend in (a, b, pg):
        backend.close()


@pytest.mark.parametrize("side", ["redis", "pg"])
@pytest.mark.parametrize("command", [["drain", "--yes"], ["drain", "--dry-run"], ["verify"],
                                     ["audit"]])
def test_a_store_spelled_two_ways_is_refused_as_source_and_target(
        cutover_redis_url: str, cutover_database_url: str, side: str,
        command: list[str]) -> None:
    url = cutover_redis_url if side == "redis" else cutover_database_url
    control = ["--control", cutover_database_url]
    assert invoke(url, cutover_database_url, *control, "init", "--yes").exit_code == 0
    before = fill(url, 25)
    result = invoke(url, respell(url), *control, *command)
    assert result.exit_code == 2, result.output
    assert "they are the same store" in result.output
    assert url in result.output and respell(url).split("+", 1)[1] in result.output
    assert ids(url) == before  # nothing was lost, nothing held
    backend = adapters.open_backend(url)
    assert all(r.state is JobState.QUEUED for r in backend.snapshot())
    backend.close()


def test_two_spellings_of_one_pair_share_one_lock_and_one_history(
        cutover_redis_url: str, cutover_database_url: str) -> None:
    tasks.reset()
    rq_a, pg_a = cutover_redis_url, cutover_database_url
    rq_b, pg_b = respell(rq_a), respell(pg_a)
    assert invoke(rq_a, pg_a, "init", "--yes").exit_code == 0
    jobs = fill(rq_a, 40)
    thread, outcome = slow_drain_in_thread(rq_a, pg_a)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(ids(pg_a)) == 0:
            time.sleep(0.05)
        second = invoke(rq_b, pg_b, "drain", "--yes")
        assert second.exit_code == 3, second.output
        assert "another drain between these two backends is running" in second.output
        # The switch is found through the other spelling too.
        code, sent = invoke_json(rq_b, pg_b, "drain", "--signal", "stop")
        assert code == 0 and len(sent["runs"]) == 1
    finally:
        thread.join(timeout=60)
    code, report = outcome["result"]
    assert code == 3 and report["stopped"] is True and 0 < report["moved"] < 40
    # The second spelling finishes the drain the first began, then verifies all of it.
    code, report = invoke_json(rq_b, pg_b, "drain", "--yes")
    assert code == 0, report
    assert ids(pg_a) == jobs and ids(rq_a) == set()
    code, verdict = invoke_json(rq_b, pg_b, "verify", "--report", os.devnull)
    assert code == 0 and verdict["verified"] == 40, verdict
    control = ControlPlane(pg_a)
    with control.tx("test") as conn:
        keys = conn.execute("SELECT DISTINCT source, target FROM cutover.ledger").fetchall()
        urls = dict(conn.execute("SELECT key, url FROM cutover.stores").fetchall())
    control.close()
    assert len(keys) == 1 and "://" not in keys[0][0]  # identities, no URL spelling
    assert set(urls) == set(keys[0])


def test_signal_stop_for_a_drain_whose_process_is_gone_says_so(
        cutover_redis_url: str, cutover_database_url: str) -> None:
    rq_url, pg_url = cutover_redis_url, cutover_database_url
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    control = ControlPlane(pg_url)
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    # What a drain killed with -9 leaves: its run recorded as running, no lock held.
    control.start_run("drain-killed", "drain", source.identity().key, target.identity().key, {})
    result = invoke(respell(rq_url), pg_url, "drain", "--signal", "stop")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "no drain is running" in text and "drain-killed" in text
    assert "process is gone" in text
    assert control.run("drain-killed")["state"] == "interrupted"  # type: ignore[index]
    for closable in (control, source, target):
        closable.close()


@pytest.mark.parametrize("command", [["drain", "--yes"], ["drain", "--dry-run"], ["audit"]])
def test_a_queue_that_is_not_on_the_source_exits_3_naming_those_that_are(
        cutover_redis_url: str, cutover_database_url: str, command: list[str]) -> None:
    assert invoke(cutover_redis_url, cutover_database_url, "init", "--yes").exit_code == 0
    jobs = fill(cutover_redis_url, 3, queue="emails") | fill(cutover_redis_url, 2)
    result = invoke(cutover_redis_url, cutover_database_url, *command, "--queue", "emials")
    assert result.exit_code == 3, result.output
    assert "no queue named 'emials'" in result.output
    assert "default, emails" in result.output
    assert ids(cutover_redis_url) == jobs


def test_an_earlier_control_schema_is_upgraded_by_init_and_keeps_its_history(
        cutover_redis_url: str, cutover_database_url: str) -> None:
    rq_url, pg_url = cutover_redis_url, cutover_database_url
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    fill(rq_url, 10)
    assert invoke(rq_url, pg_url, "drain", "--yes").exit_code == 0
    # Turn the schema and its rows back into what the earlier version wrote: URL keys.
    source, target = adapters.open_backend(rq_url), adapters.open_backend(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for column, backend, url in (("source", source, rq_url), ("target", target, pg_url)):
            for table in ("ledger", "runs"):
                conn.execute(f"UPDATE cutover.{table} SET {column} = %s WHERE {column} = %s",
                             (backend_key(url), backend.identity().key))
        conn.execute("DROP TABLE cutover.stores, cutover.legacy_keys")
        conn.execute("ALTER TABLE cutover.runs DROP COLUMN source_url, DROP COLUMN target_url")
        # ... and without what came after it: numbered migrations, the staged cut-over (0002).
        conn.execute("DROP TABLE cutover.migrations, cutover.phase_log, cutover.fleet, "
                     "cutover.claims, cutover.shadow_results, cutover.events")
        conn.execute("DROP FUNCTION cutover.claim, cutover.claim_extend, cutover.claim_finish, "
                     "cutover.claim_release")  # 0004's too
        conn.execute("ALTER TABLE cutover.phase DROP COLUMN source_key, DROP COLUMN source_url, "
                     "DROP COLUMN target_key, DROP COLUMN target_url, DROP COLUMN updated_at, "
                     "DROP CONSTRAINT phase_known")
    source.close()
    target.close()
    refused = invoke(rq_url, pg_url, "verify", "--report", os.devnull)
    assert refused.exit_code == 2 and "cutover init" in refused.output
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    code, verdict = invoke_json(rq_url, pg_url, "verify", "--report", os.devnull)
    assert code == 0 and verdict["verified"] == 10, verdict


def test_without_pg_control_system_a_marker_identifies_the_database(
        cutover_database_url: str) -> None:
    role = f"identity_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cutover_database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    try:
        as_role = as_user(cutover_database_url, role)
        keys = set()
        for url in (as_role, respell(as_role)):
            backend = adapters.open_backend(url)
            keys.add(backend.identity().key)
            backend.close()
        assert len(keys) == 1 and keys.pop().startswith("postgresql-marker:")
    finally:
        with psycopg.connect(cutover_database_url, autocommit=True) as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_memory_stores_are_known_by_name() -> None:
    a, b = adapters.open_backend("memory://ident-a"), adapters.open_backend("memory://ident-a")
    assert a.identity().key == b.identity().key == "memory:ident-a"
    private = [adapters.open_backend("memory://") for _ in range(2)]
    assert private[0].identity().key != private[1].identity().key


def test_verify_writes_a_report_file_only_when_asked(
        cutover_redis_url: str, cutover_database_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rq_url, pg_url = cutover_redis_url, cutover_database_url
    assert invoke(rq_url, pg_url, "init", "--yes").exit_code == 0
    fill(rq_url, 3)
    assert invoke(rq_url, pg_url, "drain", "--yes").exit_code == 0
    monkeypatch.chdir(tmp_path)
    plain = invoke(rq_url, pg_url, "verify")
    assert plain.exit_code == 0 and "CLEAN" in plain.output
    assert list(tmp_path.iterdir()) == [] and "report:" not in plain.output
    code, doc = invoke_json(rq_url, pg_url, "verify")
    assert code == 0 and doc["clean"] and "report" not in doc
    assert list(tmp_path.iterdir()) == []
    asked = invoke(rq_url, pg_url, "verify", "--report", "verify.json")
    assert asked.exit_code == 0 and "report: verify.json" in asked.output
    assert [p.name for p in tmp_path.iterdir()] == ["verify.json"]
    assert json.loads((tmp_path / "verify.json").read_text())["clean"] is True


def test_a_redis_user_that_cannot_write_the_marker_falls_back_to_the_run_id(
        cutover_redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    user = f"identity-ro-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(cutover_redis_url.removeprefix("rq+"))
    try:
        # SELECT is in @connection on Redis 7 but in @keyspace on Redis 6 (the embedded server).
        admin.acl_setuser(user, enabled=True, nopass=True, keys=["*"],
                          commands=["+@read", "+@connection", "+select", "+info"])
    except redis.ResponseError as exc:
        pytest.skip(f"this Redis has no ACLs: {exc}")
    try:
        url = as_user(cutover_redis_url, user)
        backend = adapters.open_backend(url)
        with caplog.at_level(logging.WARNING, "cutover.rq"):
            key = backend.identity().key
        assert key.startswith("redis-run:") and key.endswith(f"/db{database_of(url)}")
        assert str(admin.info("server")["run_id"]) in key
        assert "changes when it restarts" in caplog.text
        backend.close()
        # Once someone who may write has opened the store, the marker is there for everyone.
        reader, writer = adapters.open_backend(url), adapters.open_backend(cutover_redis_url)
        with pytest.raises(SameStoreError):  # the reader first, without the marker, then the
            stores.distinct(reader, writer, "drain")  # writer: still one store
        assert reader.identity().key == writer.identity().key
        assert reader.identity().key.startswith("redis:")
        writer.close()
        reader.close()
    finally:
        admin.acl_deluser(user)
