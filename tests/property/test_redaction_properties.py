"""No password ever reaches a redacted URL, a driver's error, a log line or the CLI's output,
however it is spelled in the URL (unencoded '/', '?', '#', '@', ':', '%', spaces...)."""

from __future__ import annotations

import io
import json
import logging
import string
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from cutover import adapters, logs
from cutover.cli import cli
from cutover.errors import ConfigurationError, CutoverError
from cutover.urls import ambiguity, hiding, redact, redact_text, secrets_of

APP = "cutover.testing.tasks:registry"
SPECIAL = "/?#@:%!$&'()*+,;=~[] "
# A password always holds a letter no timestamp, number or hex id can contain, so that finding
# it in an output means it leaked, not that it happens to spell a date.
MARK = "gjkqvxzGJKQVXZ"
passwords = st.tuples(
    st.text(string.ascii_letters + string.digits + SPECIAL, min_size=3, max_size=20),
    st.sampled_from(MARK),
    st.text(string.ascii_letters + string.digits + SPECIAL, min_size=3, max_size=20),
).map("".join)
users = st.text(string.ascii_lowercase + string.digits + "_.-", max_size=8)
hosts = st.sampled_from(["127.0.0.1", "localhost", "db.example.com", "[::1]"])
schemes = st.sampled_from(["redis", "rediss", "rq+redis", "postgresql", "postgres",
                           "procrastinate+postgresql"])
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def leaked(password: str, text: str) -> bool:
    """The password, as written or percent-encoded, is in the text."""
    return any(s and s in text for s in (password, quote(password, safe=""),
                                         password.strip()))


@FAST
@given(scheme=schemes, user=users, password=passwords, host=hosts,
       tail=st.sampled_from([":6379/0", ":5432/app", "/app", ":1/0?x=1", ""]))
@example(scheme="redis", user="", password="a/b?c#d@e:f%g hZ", host="localhost", tail=":6379/7")
def test_redact_hides_the_whole_password_and_keeps_the_rest(
        scheme: str, user: str, password: str, host: str, tail: str) -> None:
    url = f"{scheme}://{user}:{password}@{host}{tail}"
    assert redact(url) == f"{scheme}://{user}:***@{host}{tail}"
    assert password_is_hidden_in(url)


def password_is_hidden_in(url: str) -> bool:
    return all(secret not in redact(url) for secret in secrets_of(url))


@FAST
@given(scheme=schemes, user=users, password=passwords, host=hosts)
def test_redact_text_scrubs_passwords_from_free_text_without_being_told_them(
        scheme: str, user: str, password: str, host: str) -> None:
    # What a driver prints: the URL inside a sentence. The password is not registered anywhere:
    # only the scrub of ``user:pw@`` in free text can hide it.
    assume(not any(c.isspace() for c in password))
    text = f"Error connecting to '{scheme}://{user}:{password}@{host}:1/0'. Refused."
    clean = redact_text(text)
    assert not leaked(password, clean)
    assert f"{scheme}://{user}:***@" in clean and "Refused." in clean


@FAST
@given(password=passwords)
@example(password="  0g000")  # a driver's message cut at the spaces shows "0g000" alone
def test_passwords_with_spaces_are_hidden_when_the_url_is_known(password: str) -> None:
    url = f"redis://user:{password}@host:6379/0"
    pieces = f"could not parse {url!r}: bad host in {password.split(' ')[-1]}@host"
    assert not leaked(password, redact_text(pieces, *secrets_of(url)))
    with hiding(url):
        assert not leaked(password, redact_text(pieces))
    assert password not in redact_text(f"the password is {password}", *secrets_of(url))


@FAST
@given(password=passwords, user=users, scheme=st.sampled_from(["redis", "postgresql"]))
def test_ambiguous_passwords_are_refused_without_showing_them(
        password: str, user: str, scheme: str) -> None:
    url = f"{scheme}://{user}:{password}@127.0.0.1:1/0"
    problem = ambiguity(url)
    if not any(c in password for c in "/?#@[] "):
        assert problem is None
        return
    assert problem is not None and not leaked(password, problem)
    with pytest.raises(ConfigurationError) as err:
        adapters.open_backend(url)
    assert err.value.exit_code == 2 and not leaked(password, str(err.value))
    assert "percent-encoded" in str(err.value)


@settings(max_examples=40, deadline=None)
@given(password=passwords)
def test_errors_from_an_unreachable_redis_never_show_the_password(password: str) -> None:
    url = f"redis://user:{quote(password, safe='')}@127.0.0.1:1/0"
    backend = adapters.open_backend(url)  # redis-py connects on the first command
    with pytest.raises(CutoverError) as err:
        backend.identity()
    backend.close()
    assert "unreachable" in str(err.value) and not leaked(password, str(err.value))


@pytest.mark.slow
@settings(max_examples=2, deadline=None)
@given(password=passwords)
def test_errors_from_an_unreachable_postgresql_never_show_the_password(password: str) -> None:
    url = f"postgresql://user:{quote(password, safe='')}@127.0.0.1:1/db"
    with pytest.raises(CutoverError) as err:
        adapters.open_backend(url)
    assert "unreachable" in str(err.value) and not leaked(password, str(err.value))


@pytest.mark.parametrize("fmt", ["text", "json"])
@settings(max_examples=60, deadline=None)
@given(password=passwords, encode=st.booleans())
def test_the_cli_never_prints_a_password_in_errors_or_logs(
        fmt: str, password: str, encode: bool) -> None:
    written = quote(password, safe="") if encode else password
    source = f"redis://user:{written}@127.0.0.1:1/0"
    result = CliRunner().invoke(cli, ["--log-format", fmt, "--log-level", "DEBUG", "--app", APP,
                                      "--source", source, "--target", "memory://",
                                      "worker", "--backend", "rq", "--burst"])
    assert result.exit_code == 2, result.output
    assert not leaked(password, result.output)
    assert ("unreachable" if encode or not ambiguity(source) else "percent-encoded") \
        in result.output


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_and_tracebacks_are_redacted(fmt: str) -> None:
    stream = io.StringIO()
    logs.setup("INFO", "json" if fmt == "json" else "text")
    logger = logging.getLogger("cutover.test")
    handler = next(h for h in logging.getLogger("cutover").handlers
                   if getattr(h, "_cutover", False))
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        logger.info("connecting to %s", "postgresql://bob:se/cr?et#1@db:5432/app")
        try:
            raise RuntimeError("failed: redis://:hunter2@cache:6379/0 refused")
        except RuntimeError:
            logger.exception("it broke")
        with hiding("redis://:two words@cache:6379/0"):
            logger.warning("driver said: password two words rejected")
    finally:
        logs.setup("INFO", "text")
    out = stream.getvalue()
    for secret in ("se/cr?et#1", "hunter2", "two words"):
        assert secret not in out
    assert "postgresql://bob:***@db:5432/app" in out and "redis://:***@cache" in out
    if fmt == "json":
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert {line["level"] for line in lines} == {"info", "error", "warning"}
        assert "redis://:***@cache" in next(x["exc"] for x in lines if "exc" in x)


def test_a_library_warning_goes_through_the_same_redaction() -> None:
    stream = io.StringIO()
    logs.setup("INFO", "text")
    root = next(h for h in logging.getLogger().handlers if getattr(h, "_cutover", False))
    assert isinstance(root, logging.StreamHandler)
    root.setStream(stream)
    try:
        logging.getLogger("psycopg.pool").warning("error connecting to %s",
                                                  "postgresql://u:p@ss/w@h/db")
    finally:
        logs.setup("INFO", "text")
    assert "p@ss/w" not in stream.getvalue() and "u:***@h/db" in stream.getvalue()


@pytest.mark.rq
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=passwords)
def test_errors_from_a_redis_that_refuses_the_credentials_never_show_the_password(
        cutover_redis_url: str, password: str) -> None:
    # A real server that has no such user: it answers, and refuses the AUTH.
    scheme, rest = cutover_redis_url.removeprefix("rq+").split("://", 1)
    if scheme == "unix":
        pytest.skip("credentials on a unix-socket URL go in the query")
    url = f"{scheme}://nobody-{MARK}:{quote(password, safe='')}@{rest}"
    backend = adapters.open_backend(url)
    with pytest.raises(CutoverError) as err:
        backend.identity()
    backend.close()
    assert not leaked(password, str(err.value)) and "***" in str(err.value)
    assert "refused the credentials" in str(err.value)
