"""The cut-over marker is compared by the control plane's identity and schema, not by the
URL's spelling (cutover.marker.control_mismatch); an older marker without the identity by
schema and database name."""

from __future__ import annotations

from cutover import marker

KEY = "postgresql:7312345678901234567/app"


def _mark(control_key: str = KEY, url: str = "postgresql://app:***@db1:5432/app",
          schema: str = "cutover") -> marker.CutoverMarker:
    return marker.CutoverMarker(control_url=url, schema=schema, source_url="redis://r/0",
                                target_url=url, control_key=control_key)


def test_same_identity_and_schema_match_however_spelled() -> None:
    found = _mark()
    for url in ("postgresql://app:pw@127.0.0.1/app", "postgresql:///app?host=/run/pg",
                "postgresql://other@localhost:5432/renamed_in_url"):
        assert marker.control_mismatch(found, KEY, url, "cutover") is None


def test_another_schema_or_database_is_named() -> None:
    found = _mark()
    why = marker.control_mismatch(found, KEY, "postgresql://h/app", "cutover_old")
    assert why is not None and "cutover_old" in why and "'cutover'" in why
    other = "postgresql:7312345678901234567/app_copy"
    why = marker.control_mismatch(found, other, "postgresql://h/app_copy", "cutover")
    assert why is not None and "another database" in why and "app_copy" in why


def test_a_marker_without_identity_compares_schema_and_database_name() -> None:
    old = _mark(control_key="")
    assert marker.control_mismatch(old, KEY, "postgresql://localhost/app", "cutover") is None
    assert marker.control_mismatch(old, KEY, "postgresql:///app?host=/s", "cutover") is None
    assert marker.control_mismatch(old, KEY, "postgresql://h/other", "cutover") is not None
    assert marker.control_mismatch(old, KEY, "postgresql://h/app", "x") is not None


def test_the_refusal_names_both_and_hides_passwords() -> None:
    found = _mark()
    error = marker.other_control("refusing to start", "redis://r/0", found,
                                 "postgresql://app:hunter2@db2/app", "cutover_old", "schema")
    text = str(error)
    assert "hunter2" not in text and "db2" in text and "db1" in text
    assert "CUTOVER_SCHEMA=cutover_old" in text and "CUTOVER_SCHEMA=cutover;" in text
    assert error.exit_code == 2
