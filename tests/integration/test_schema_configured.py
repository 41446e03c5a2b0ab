"""A non-default control schema (CUTOVER_SCHEMA, Settings.schema) is honoured end to end, against
a real PostgreSQL control plane: `cutover init`, the phase commands, a Router (built directly and
from the environment) and `cutover worker` all use it, and nothing is ever written to the default
schema ("cutover")."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from cutover import InMemoryBackend
from cutover.cli import cli
from cutover.control import ControlPlane
from cutover.phases import Phase
from cutover.router import Router
from cutover.settings import DEFAULT_SCHEMA, Settings
from cutover.testing import tasks
from cutover.testing.tasks import registry

APP = "cutover.testing.tasks:registry"
SCHEMA = "cutover_alt"


class Alt:
    """A cut-over of two memory stores whose control plane lives in schema ``cutover_alt``."""

    def __init__(self, database_url: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.database_url = database_url
        self.source_url, self.target_url = f"memory://alt-src-{tag}", f"memory://alt-tgt-{tag}"
        self.source, self.target = (InMemoryBackend(self.source_url),
                                    InMemoryBackend(self.target_url))
        self.env = {"CUTOVER_SCHEMA": SCHEMA, "CUTOVER_SOURCE": self.source_url,
                    "CUTOVER_TARGET": self.target_url, "CUTOVER_CONTROL": database_url,
                    "CUTOVER_APP": APP}

    def cli(self, *args: str) -> Result:
        result = CliRunner().invoke(cli, list(args), env=self.env)
        assert result.exit_code == 0, result.output
        return result

    def doc(self, *args: str) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.cli("--json", *args).stdout)
        return parsed

    def schemas(self) -> set[str]:
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE "
                                "'cutover%'").fetchall()
        return {r[0] for r in rows}

    def count(self, table: str) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(f"SELECT count(*) FROM {SCHEMA}.{table}").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def alt(cutover_database_url: str) -> Alt:
    return Alt(cutover_database_url)


def test_a_configured_schema_is_used_by_the_phase_commands_a_router_and_the_worker(
        alt: Alt) -> None:
    alt.cli("init", "--yes")
    assert alt.schemas() == {SCHEMA}
    for _ in range(2):
        alt.cli("phase", "advance", "--yes", "--force", "--why", "schema test")
    shown = alt.doc("phase", "show")
    assert (shown["phase"], shown["epoch"]) == ("live", 2)
    assert [h["to"] for h in shown["history"]] == ["live", "shadow"]
    plane = ControlPlane(alt.database_url, SCHEMA)
    default = ControlPlane(alt.database_url)
    try:
        assert plane.read_phase().phase is Phase.LIVE
        assert default.schema_version() is None  # the default schema was never created
        # A Router built directly with the schema, and one from the same environment.
        direct = Router(registry, alt.source_url, alt.target_url, control=alt.database_url,
                        schema=SCHEMA)
        from_env = Router.from_env(registry, Settings.from_env(alt.env))
        assert from_env.schema == SCHEMA
        ids = []
        for router in (direct, from_env):
            with router:
                assert router.phase is Phase.LIVE
                ids.append(router.enqueue(tasks.add, 1, 2))
        # Dual-written (live), each with its ledger row in the configured schema.
        assert {r.id for r in alt.source.snapshot()} == set(ids)
        assert {r.id for r in alt.target.snapshot()} == set(ids)
        assert alt.count("ledger") == 2
        # A Router left on the default schema finds no cut-over there: phase off.
        with Router(registry, alt.source_url, alt.target_url, control=alt.database_url) as off:
            assert off.schema == DEFAULT_SCHEMA and off.phase is Phase.OFF
        # The worker follows the configured schema's phase: runs through its fence.
        report = alt.doc("worker", "--backend", "source", "--burst", "--isolation", "thread")
        assert report["succeeded"] == 2
        assert alt.count("claims") == 2
        assert alt.doc("status")["phase"]["phase"] == "live"
        alt.cli("rollback", "--yes", "--force", "--why", "schema test")
        assert plane.read_phase().phase is Phase.SHADOW
        assert alt.schemas() == {SCHEMA}  # nothing ever reached the default schema
    finally:
        plane.close()
        default.close()
