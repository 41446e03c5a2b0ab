"""Prevention, not only detection: once a staged cut-over left ``off`` the phase command marks
both stores (cutover.marker), and a `cutover worker` on a marked store without a usable control
plane (no --target/--control, or a --control/schema where the control schema is missing)
refuses to start: exit 2, nothing run, the control plane to pass named (password redacted).
Before the marker such a worker ran as a plain worker and in live ran jobs twice (see
test_unfenced_cutover_worker.py). The same worker given the control plane runs; a store never
in a cut-over is unaffected; ``--unfenced --why`` is the explicit, logged way past."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from cutover_procrastinate import ProcrastinateBackend
from cutover_rq import RQBackend

from cutover import Router, marker
from cutover.control import ControlPlane
from cutover.errors import ConfigurationError
from cutover.phases import Phase
from cutover.testing import tasks
from cutover.testing.tasks import registry
from tests.integration.control_db import control_database
from tests.integration.drain_helpers import APP, invoke, run_cli

pytestmark = [pytest.mark.rq, pytest.mark.pg]

SECRET = "s3cr3t-pw"


def _with_password(url: str) -> str:
    """The PostgreSQL URL with a password (the test server trusts local connections, so it is
    accepted and ignored): what the marker and the refusal must never show."""
    parts = urlsplit(url)  # postgres@127.0.0.1:5432, or postgres:@ (a Unix socket's)
    host = parts.netloc.rsplit("@", 1)[-1]
    with_secret = urlunsplit(parts._replace(netloc=f"{parts.username}:{SECRET}@{host}"))
    assert SECRET in with_secret
    return with_secret


def _worker(*args: str, env: dict[str, str] | None = None, options: tuple[str, ...] = (),
            backend: str = "rq") -> tuple[int, dict[str, Any], str]:
    """A real `cutover worker --backend rq --burst` process: (exit code, JSON summary, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cutover", "--json", "--app", APP, *args, "worker", "--backend",
         backend, "--burst", "--concurrency", "1", "--isolation", "thread", *options],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    doc: dict[str, Any] = {}
    if proc.stdout.strip():
        doc = json.loads(proc.stdout)
    return proc.returncode, doc, proc.stderr


def _one_job(url: str) -> str:
    backend = RQBackend(url)
    try:
        return backend.enqueue([registry.make_record(tasks.add, (2, 3))])[0]
    finally:
        backend.close()


def _waiting(url: str, job_id: str) -> bool:
    backend = RQBackend(url)
    try:
        record = backend.get(job_id)
        return record is not None and record.state.value in ("queued", "waiting")
    finally:
        backend.close()


def _marker(url: str) -> marker.CutoverMarker | None:
    backend = RQBackend(url)
    try:
        return marker.read(backend)
    finally:
        backend.close()


@pytest.fixture
def live(urls: tuple[str, str]) -> tuple[str, str]:
    """The pair in live, walked there by the phase command (which marks both stores), the
    target URL given with a password."""
    source, target = urls
    assert _marker(source) is None  # init marks nothing: no cut-over started
    for _ in range(2):  # off -> shadow -> live, forced (no workers needed for this test)
        result = invoke(source, _with_password(target), "phase", "advance", "--yes", "--force",
                        "--why", "test")
        assert result.exit_code == 0, result.output
    control = ControlPlane(target)
    try:
        assert control.read_phase().phase is Phase.LIVE
    finally:
        control.close()
    return source, target


def test_the_phase_command_marks_both_stores(live: tuple[str, str]) -> None:
    source, target = live
    found = _marker(source)
    assert found is not None
    assert found.phase == "live" and found.epoch == 2 and found.schema == "cutover"
    assert found.source_url == source and target.rsplit("/", 1)[1] in found.control_url
    backend = RQBackend(source)
    try:
        text = backend.read_cutover_marker()
    finally:
        backend.close()
    assert text is not None and SECRET not in text
    assert f"postgres:{SECRET}@" not in found.control_url and "***" in found.control_url


def test_a_worker_without_the_control_plane_refuses_a_marked_store(
        live: tuple[str, str]) -> None:
    source, target = live
    job = _one_job(source)
    # No control plane at all.
    code, doc, err = _worker("--source", source)
    assert code == 2, err
    assert "refusing to start" in err and "--control" in err and "--target" in err
    assert "no --control given" in err and SECRET not in err
    assert doc.get("exit_code") == 2 and "succeeded" not in doc
    # A control plane named whose schema is missing there.
    code, doc, err = _worker("--source", source, "--control", _with_password(target),
                             env={"CUTOVER_SCHEMA": "not_the_cutover"})
    assert code == 2, err
    assert "has no control schema 'not_the_cutover'" in err and "CUTOVER_SCHEMA=cutover" in err
    assert SECRET not in err
    assert _waiting(source, job), "a refused worker ran the job"
    # The same worker with the control plane starts, and runs the job through the fence.
    code, doc, err = _worker("--source", source, "--target", target)
    assert code == 0, err
    assert doc["succeeded"] == 1
    assert not _waiting(source, job)


def test_the_procrastinate_store_is_marked_and_refuses_too(live: tuple[str, str]) -> None:
    source, target = live
    backend = ProcrastinateBackend(target)
    try:
        found = marker.read(backend)
    finally:
        backend.close()
    assert found is not None and found.phase == "live" and found.source_url == source
    code, _, err = _worker(backend=target)  # the PostgreSQL store by URL, no control plane
    assert code == 2 and "refusing to start" in err and SECRET not in err, err
    code, doc, err = _worker("--source", source, "--target", target, backend="target")
    assert code == 0, err
    assert "succeeded" in doc


def _source_ids(url: str) -> set[str]:
    backend = RQBackend(url)
    try:
        return {r.id for r in backend.snapshot()}
    finally:
        backend.close()


def test_a_router_without_the_control_plane_refuses_a_marked_source(
        live: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    source, target = live
    before = _source_ids(source)
    for router in (Router(registry, source=source),  # no target: no control plane
                   Router(registry, source=source, target=target, schema="not_the_cutover")):
        try:
            with pytest.raises(ConfigurationError, match="refusing to enqueue") as refused:
                router.enqueue(tasks.add, 1, 1)
            text = str(refused.value)
            assert "target=" in text and "control=" in text and SECRET not in text
            assert router.phase is Phase.OFF  # what it would have written by
        finally:
            router.close()
    assert _source_ids(source) == before  # nothing written
    with Router(registry, source=source, target=target) as fleet:  # the control plane: live
        job = fleet.enqueue(tasks.add, 1, 2)
    assert job in _source_ids(source)
    with caplog.at_level("WARNING", logger="cutover.router"), \
            Router(registry, source=source, unfenced="pair retired") as anyway:
        job = anyway.enqueue(tasks.add, 2, 2)
    assert job in _source_ids(source)
    assert any("unfenced='pair retired'" in r.getMessage() for r in caplog.records)


def _unmark(source: str, target: str) -> None:
    """What a cut-over begun before the marker existed looks like."""
    backend = RQBackend(source)
    try:
        backend.redis.delete("cutover:cutover")
    finally:
        backend.close()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS cutover_cutover_marker")
    assert _marker(source) is None


def test_stores_unmarked_mid_cutover_are_marked_by_a_fenced_worker_or_a_rerun(
        live: tuple[str, str]) -> None:
    source, target = live
    _unmark(source, target)
    code, _, err = _worker("--source", source, "--target", target)  # fenced: marks its store
    assert code == 0, err
    found = _marker(source)
    assert found is not None and (found.phase, found.epoch) == ("live", 2)
    assert SECRET not in found.control_url
    code, _, err = _worker("--source", source)
    assert code == 2 and "refusing to start" in err
    _unmark(source, target)
    result = invoke(source, target, "phase", "set", "live", "--yes")  # a re-run: marks both
    assert result.exit_code == 0 and "already" in result.output, result.output
    assert _marker(source) is not None
    backend = ProcrastinateBackend(target)
    try:
        assert marker.read(backend) is not None
    finally:
        backend.close()


def test_unfenced_is_explicit_and_logged(live: tuple[str, str]) -> None:
    source, _ = live
    code, _, err = _worker("--source", source, options=("--unfenced",))
    assert code == 2 and "--unfenced needs --why" in err
    job = _one_job(source)
    code, doc, err = _worker("--source", source,
                             options=("--unfenced", "--why", "pair retired"))
    assert code == 0, err
    assert doc["succeeded"] == 1 and not _waiting(source, job)
    assert "UNFENCED" in err and "pair retired" in err


def test_a_rollback_to_off_keeps_the_marker(live: tuple[str, str]) -> None:
    source, target = live
    result = invoke(source, target, "rollback", "--to", "off", "--yes", "--force", "--why", "t")
    assert result.exit_code == 0, result.output
    found = _marker(source)
    assert found is not None and found.phase == "off" and found.epoch == 3
    code, _, err = _worker("--source", source)
    assert code == 2 and "refusing to start" in err


def test_a_store_never_in_a_cutover_is_unaffected(urls: tuple[str, str]) -> None:
    source, target = urls
    job = _one_job(source)
    code, doc, err = _worker("--source", source)
    assert code == 0, err
    assert doc["succeeded"] == 1 and not _waiting(source, job)
    assert _marker(source) is None  # a worker never marks
    with Router(registry, source=source) as router:  # nor does a Router, which still writes
        assert router.enqueue(tasks.add, 1, 1) in _source_ids(source)
    backend = ProcrastinateBackend(target)
    try:
        assert marker.read(backend) is None  # no marker table: one failed read, no error
    finally:
        backend.close()


@pytest.mark.parametrize(("fault", "phase", "marked"), [("phase_checked", "off", False),
                                                        ("phase_committed", "shadow", True)])
def test_a_phase_command_killed_out_of_off_leaves_no_unmarked_store_in_a_cutover(
        urls: tuple[str, str], fault: str, phase: str, marked: bool) -> None:
    """kill -9 of the first move out of off: before its decision is acted on, nothing is
    written (phase off, no marker); after the commit, before the marker's post-commit write,
    the stores are already marked (written before the commit)."""
    source, target = urls
    proc = run_cli(source, target, "phase", "advance", "--yes", "--force", "--why", "kill",
                   env={"CUTOVER_FAULT": f"{fault}:1"})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    control = ControlPlane(target)
    try:
        assert control.read_phase().phase.value == phase
    finally:
        control.close()
    assert (_marker(source) is not None) is marked
    backend = ProcrastinateBackend(target)
    try:
        assert (marker.read(backend) is not None) is marked
    finally:
        backend.close()
    code, _, err = _worker("--source", source)
    assert code == (2 if marked else 0), err


def _leftover(target: str, schema: str) -> None:
    """A control schema that is not the cut-over's (an earlier one's, a copy): it exists, at
    phase off epoch 0, where a worker would run unfenced and a Router write the source only."""
    plane = ControlPlane(target, schema)
    try:
        plane.init()
        assert plane.read_phase().phase is Phase.OFF
    finally:
        plane.close()


def _respell(url: str) -> str:
    """The same database by another name (host name for address, an option that changes
    nothing; a Unix socket's URL gets the option only)."""
    other = url.replace("127.0.0.1", "localhost")
    return f"{other}{'&' if '?' in other else '?'}connect_timeout=7"


def test_a_worker_following_another_control_plane_than_the_markers_is_refused(
        live: tuple[str, str]) -> None:
    """The marker is compared, not only read: a leftover schema in the marker's database, or a
    control schema of the marker's name in another database, is refused (exit 2, both named,
    no password); the marker's own database spelled another way is not."""
    source, target = live
    _leftover(target, "cutover_old")
    job = _one_job(source)
    code, doc, err = _worker("--source", source, "--target", _with_password(target),
                             env={"CUTOVER_SCHEMA": "cutover_old"})
    assert code == 2, err
    assert "refusing to start" in err and "CUTOVER_SCHEMA=cutover_old" in err
    assert "CUTOVER_SCHEMA=cutover)" in err or "CUTOVER_SCHEMA=cutover;" in err, err
    assert SECRET not in err and "succeeded" not in doc
    assert _waiting(source, job), "a refused worker ran the job"
    with control_database(target) as other:
        _leftover(other.url, "cutover")
        code, doc, err = _worker("--source", source, "--control", _with_password(other.url))
        assert code == 2, err
        assert "another database" in err and other.name in err
        assert target.rsplit("/", 1)[1] in err and SECRET not in err
        assert _waiting(source, job), "a refused worker ran the job"
    code, doc, err = _worker("--source", source, "--control", _respell(target))
    assert code == 0, err
    assert doc["succeeded"] == 1 and not _waiting(source, job)


def test_a_router_following_another_control_plane_than_the_markers_is_refused(
        live: tuple[str, str]) -> None:
    """After complete, a Router on a leftover schema (phase off there) would write the source
    only, where no worker runs: refused, nothing written; the marker's plane spelled another
    way writes the target."""
    source, target = live
    for _ in range(2):  # live -> rampdown -> complete
        result = invoke(source, target, "phase", "advance", "--yes", "--force", "--why", "t")
        assert result.exit_code == 0, result.output
    _leftover(target, "cutover_old")
    before = _source_ids(source)
    router = Router(registry, source=source, target=_with_password(target),
                    schema="cutover_old")
    try:
        for _ in range(2):  # refused again on the next call (not only the first)
            with pytest.raises(ConfigurationError, match="refusing to enqueue") as refused:
                router.enqueue(tasks.add, 1, 1)
            text = str(refused.value)
            assert "CUTOVER_SCHEMA=cutover_old" in text and "CUTOVER_SCHEMA=cutover" in text
            assert SECRET not in text
    finally:
        router.close()
    assert _source_ids(source) == before  # nothing written
    with Router(registry, source=source, target=_respell(target)) as right:
        job = right.enqueue(tasks.add, 1, 2)
    assert job not in _source_ids(source)
    backend = ProcrastinateBackend(target)
    try:
        assert backend.get(job) is not None
    finally:
        backend.close()


def test_a_worker_built_in_python_on_another_control_plane_is_refused(
        live: tuple[str, str]) -> None:
    """The API's way (Worker(gate=GateConfig(...))) compares the marker too."""
    from cutover.fence import GateConfig
    from cutover.phases import Side
    from cutover.worker import Worker

    source, target = live
    _leftover(target, "cutover_old")
    job = _one_job(source)
    backend = RQBackend(source)
    control = ControlPlane(target, "cutover_old")
    try:
        worker = Worker(backend, registry, burst=True, gate=GateConfig(control, Side.SOURCE))
        with pytest.raises(ConfigurationError, match="CUTOVER_SCHEMA=cutover_old"):
            worker.run(install_signal_handlers=False)
    finally:
        control.close()
        backend.close()
    assert _waiting(source, job)
