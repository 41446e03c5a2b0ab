"""The control plane behind PgBouncer in transaction mode (a real pgbouncer, when installed):
what works (migrations, transitions, fleet, claims, the watcher by polling), what is refused
(the drain's session lock), and the probe that notices rotating server backends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from cutover.control import ControlPlane, PhaseWatcher
from cutover.errors import ConfigurationError
from cutover.phases import Outcome, Phase, Side, advance, decide


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_bouncer(database_url: str, *, round_robin: bool) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if binary is None:
        # CI installs pgbouncer and sets this: there a missing binary is a failed install, which
        # must fail the run instead of skipping these tests in silence.
        if os.environ.get("CUTOVER_REQUIRE_PGBOUNCER"):
            pytest.fail("pgbouncer is required here (CUTOVER_REQUIRE_PGBOUNCER) but not installed")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    info = conninfo_to_dict(database_url)
    host, port = str(info.get("host") or "127.0.0.1"), str(info.get("port") or 5432)
    if host.startswith("/") and os.geteuid() == 0:
        pytest.skip("pgbouncer runs as nobody here and cannot reach the test server's private "
                    "socket directory: give CUTOVER_TEST_DATABASE_URL over TCP")
    user, db = str(info.get("user") or "postgres"), str(info["dbname"])
    password = info.get("password")
    work = tempfile.mkdtemp(prefix="cutover-plane-pgb-")
    os.chmod(work, 0o777)  # pgbouncer refuses to run as root: it runs as nobody
    listen = _free_port()
    server = f"host={host} port={port} user={user}" + (f" password={password}"
                                                       if password else "")
    with open(f"{work}/users.txt", "w") as f:
        f.write(f'"{user}" ""\n')
    with open(f"{work}/pgbouncer.ini", "w") as f:
        f.write(f"[databases]\n* = {server}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
                f"listen_port = {listen}\nunix_socket_dir =\nauth_type = trust\n"
                f"auth_file = {work}/users.txt\npool_mode = transaction\n"
                f"default_pool_size = 4\nmin_pool_size = {3 if round_robin else 0}\n"
                f"server_round_robin = {1 if round_robin else 0}\n"
                f"logfile = {work}/pgbouncer.log\npidfile = {work}/pgbouncer.pid\n"
                "ignore_startup_parameters = extra_float_digits,options\n")
    for name in os.listdir(work):
        os.chmod(f"{work}/{name}", 0o666)
    command = [binary, f"{work}/pgbouncer.ini"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql://{user}@127.0.0.1:{listen}/{db}"
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return proc, url
        except psycopg.OperationalError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = Path(f"{work}/pgbouncer.log")
                text = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"pgbouncer did not start ({exc}): {text}") from None
            time.sleep(0.1)


@pytest.fixture
def bouncer(cutover_database_url: str) -> Iterator[str]:
    proc, url = start_bouncer(cutover_database_url, round_robin=False)
    yield url
    proc.terminate()
    proc.wait(10)


def test_control_works_behind_pgbouncer_transaction_mode_when_told(bouncer: str) -> None:
    plane = ControlPlane(bouncer, schema="cutover_pgb", pooling="transaction")
    try:
        assert plane.init() is True
        plane.require()
        member = uuid.uuid4()
        for i in range(12):  # past psycopg's prepare threshold: nothing is prepared
            assert plane.claim(f"j{i}", Side.SOURCE, member).won
        with PhaseWatcher(plane, refresh=0.3) as watcher:
            move = advance(Phase.OFF)
            plane.transition(decide(move, {c: Outcome(True) for c in move.checks}))
            assert watcher.wait_for(1, timeout=3)
            assert not watcher.listening  # polling: LISTEN would not survive the pooler
        with pytest.raises(ConfigurationError, match="transaction pooler"):
            plane.lock_pair("a", "b")
    finally:
        plane.close()


def test_control_probe_notices_pgbouncer_rotating_server_backends(
        cutover_database_url: str) -> None:
    proc, url = start_bouncer(cutover_database_url, round_robin=True)
    try:
        direct = ControlPlane(cutover_database_url, schema="cutover_pgb2")
        assert not direct.pooled()
        # Three clients in transactions at once make the pool open three server connections.
        held = [psycopg.connect(url) for _ in range(3)]
        for conn in held:
            conn.execute("SELECT 1")
        for conn in held:  # committed, not closed mid-transaction: the pool keeps the backends
            conn.commit()
        for conn in held:
            conn.close()
        pooled = ControlPlane(url, schema="cutover_pgb2")
        deadline = time.monotonic() + 5
        while not pooled.pooled() and time.monotonic() < deadline:
            pooled.close()  # a fresh connection and a fresh probe
            pooled._pooled = None
            time.sleep(0.2)
        assert pooled.pooled()
        with pytest.raises(ConfigurationError, match="session mode"):
            pooled.lock_pair("a", "b")
        direct.close()
        pooled.close()
    finally:
        proc.terminate()
        proc.wait(10)
