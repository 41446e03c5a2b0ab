import pytest

from cutover import adapters
from cutover.errors import ConfigurationError, UnknownAdapterError
from cutover.urls import hiding, redact, redact_text, secrets_of


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://user:s3cret@db/app", "postgresql://user:***@db/app"),
        ("postgresql://db/app?password=s3cret&x=1", "postgresql://db/app?password=***&x=1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_redact_hides_passwords(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_redact_text_scrubs_urls_inside_messages() -> None:
    text = "could not connect to postgresql://bob:hunter2@db:5432/x (hunter2)"
    clean = redact_text(text, "hunter2")
    assert "hunter2" not in clean and "bob:***@db" in clean


@pytest.mark.parametrize(
    ("url", "adapter"),
    [
        ("redis://localhost:6379/0", "rq"),
        ("rediss://localhost:6379/0", "rq"),
        ("unix:///tmp/redis.sock?db=2", "rq"),
        ("postgresql://localhost/app", "procrastinate"),
        ("postgres://localhost/app", "procrastinate"),
        ("rq+redis://localhost:6379/0", "rq"),
        ("procrastinate+postgresql://localhost/app", "procrastinate"),
        ("memory://", "memory"),
    ],
)
def test_url_scheme_picks_the_adapter(url: str, adapter: str) -> None:
    assert adapters.split(url)[0] == adapter


def test_every_adapter_is_installed_through_entry_points() -> None:
    assert {"memory", "rq", "procrastinate"} <= set(adapters.available())


def test_unknown_scheme_says_did_you_mean() -> None:
    with pytest.raises(UnknownAdapterError, match=r"did you mean redis://\?"):
        adapters.split("redsi://:pw@host/0")


def test_unknown_adapter_name_says_did_you_mean() -> None:
    with pytest.raises(UnknownAdapterError, match="did you mean 'procrastinate'"):
        adapters.load("procrastinat")


def test_not_a_url_is_a_configuration_error_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as err:
        adapters.split("localhost:6379")
    assert "expected e.g." in str(err.value)


def test_core_imports_no_backend_library() -> None:
    import subprocess
    import sys

    code = ("import sys, cutover, cutover.cli, cutover.worker, cutover.memory; "
            "bad = [m for m in ('redis', 'rq', 'procrastinate') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("url", "db"),
    [("redis://h:6379/7", 7), ("redis://h:6379", 0), ("redis://h:6379/", 0),
     ("redis://h/?db=3", 3), ("redis://h/3?db=3", 3), ("unix:///tmp/r.sock?db=2", 2),
     ("unix:///tmp/r.sock", 0)],
)
def test_the_redis_database_is_read_from_the_path_or_db(url: str, db: int) -> None:
    from cutover_rq.store import database_of

    assert database_of(url) == db


@pytest.mark.parametrize(
    ("url", "needle"),
    [("redis://:pw@h:6379/abc", "'abc' (path"), ("redis://h:6379/1/2", "'1/2' (path"),
     ("redis://h:6379/-1", "'-1' (path"), ("redis://h/?db=abc", "'abc' (?db="),
     ("redis://h/?db=", "'' (?db="), ("redis://h:6379/1?db=2", "more than one Redis database"),
     ("unix:///tmp/r.sock?db=x", "'x' (?db=")],
)
def test_a_redis_database_that_is_not_one_number_is_refused(url: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        adapters.open_backend(url)
    assert err.value.exit_code == 2
    assert needle in str(err.value) and ":pw@" not in str(err.value)


def test_a_password_the_url_shows_anyway_does_not_mangle_messages() -> None:
    url = "postgresql://postgres:postgres@db:5432/app"
    with hiding(url):
        text = redact_text(f"PostgreSQL at {url} is unreachable: no postgres listening")
    assert text == ("PostgreSQL at postgresql://postgres:***@db:5432/app is unreachable: no "
                    "postgres listening")
    assert secrets_of("redis://:s3cr%2Ft@h/0") == ("s3cr%2Ft", "s3cr/t")


@pytest.mark.parametrize("shorter", ["hunter", "2xyz", "ter2x"])
def test_a_secret_inside_a_longer_one_leaves_none_of_the_longer_showing(shorter: str) -> None:
    """Longest first: replacing the shorter secret first would leave the rest of the longer."""
    longer = "hunter2xyz"
    text = f"auth failed for {longer}; retrying"
    assert redact_text(text, shorter, longer) == "auth failed for ***; retrying"
    with hiding(f"redis://:{shorter}@a:6379/0", f"postgresql://u:{longer}@b/app"):
        assert redact_text(text) == "auth failed for ***; retrying"


@pytest.mark.parametrize("url", ["redis://cache:6379/0?password=pa?ss&ssl=1",
                                 "postgresql://u@db:5432/app?sslmode=off&password=pa?ss"])
def test_a_password_in_the_query_string_is_hidden_everywhere(url: str) -> None:
    """``password=`` in the query: redact() hides it in the URL, and hiding() registers it
    whole (up to the next ``&``, a ``?`` in it included) so that redact_text() hides it alone."""
    assert "pa?ss" not in redact(url) and "password=***" in redact(url)
    assert secrets_of(url) == ("pa?ss",)
    with hiding(url):
        text = redact_text(f"connecting to {url} failed: bad password 'pa?ss'")
    assert "pa?ss" not in text and "ss'" not in text
    assert text == f"connecting to {redact(url)} failed: bad password '***'"
