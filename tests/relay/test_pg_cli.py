"""``hermes-relay serve --db postgresql://...`` (and ``RELAY_DB``): the store it picks, and a bad
URL as one redacted line, exit 1."""

from __future__ import annotations

import pytest

from relay.connector.store_api import is_pg_url, redact_url
from tests.procs import Proc, free_port, relay_cmd


@pytest.mark.parametrize(
    ("db", "expected"),
    [
        ("postgresql://u:hunter2@db.example:5432/relay", "postgresql://u:***@db.example:5432/relay"),
        ("postgres://u:hunter2@db/relay?sslmode=require", "postgres://u:***@db/relay?sslmode=require"),
        ("POSTGRESQL://:hunter2@db/relay", "POSTGRESQL://:***@db/relay"),
        ("postgresql://u@db/relay", "postgresql://u@db/relay"),
        ("postgresql://u:hunter2@db:port/relay", "postgresql://u:***@db:port/relay"),
        ("/data/relay.db", "/data/relay.db"),
    ],
    ids=["password", "postgres-scheme", "no-user", "no-password", "bad-port", "sqlite-path"],
)
def test_redact_url_hides_only_the_password(db: str, expected: str) -> None:
    """redact_url replaces a URL's password by *** and leaves everything else as given."""
    assert redact_url(db) == expected
    assert "hunter2" not in redact_url(db)


@pytest.mark.parametrize(
    ("db", "pg"),
    [("postgresql://h/d", True), ("postgres://h/d", True), ("relay.db", False), ("file:x.db", False)],
    ids=["postgresql", "postgres", "path", "sqlite-uri"],
)
def test_is_pg_url_by_scheme(db: str, pg: bool) -> None:
    """Only postgres:// and postgresql:// select the PostgreSQL store."""
    assert is_pg_url(db) is pg


async def _serve_fails(db_flag: str | None, env: dict[str, str] | None = None) -> list[str]:
    args = relay_cmd(free_port(), db_flag or "x")
    if db_flag is None:
        i = args.index("--db")
        del args[i : i + 2]
    proc = await Proc(args, env=env).start()
    try:
        rc = await proc.wait(timeout=15)
    finally:
        await proc.stop()
    assert rc == 1, proc.output
    lines = [line for line in proc.lines if line.strip()]
    assert len(lines) == 1, proc.output
    return lines


@pytest.mark.parametrize("via", ["flag", "env"], ids=["flag", "env"])
async def test_relay_serve_unreachable_postgres_exits_1_with_one_redacted_line(via: str) -> None:
    """Nobody listening at the URL: exit 1, one line naming the URL without its password."""
    url = f"postgresql://alice:hunter2@127.0.0.1:{free_port()}/relay"
    if via == "flag":
        lines = await _serve_fails(url)
    else:
        lines = await _serve_fails(None, env={"RELAY_DB": url})
    assert "postgresql://alice:***@127.0.0.1" in lines[0]
    assert "hunter2" not in lines[0]
    assert "Traceback" not in lines[0]


async def test_relay_serve_bad_postgres_url_exits_1_with_one_redacted_line() -> None:
    """A URL asyncpg cannot parse (a port that is not a number): one redacted line, exit 1."""
    lines = await _serve_fails("postgresql://bob:hunter2@127.0.0.1:notaport/relay")
    assert "postgresql://bob:***@" in lines[0]
    assert "hunter2" not in lines[0]


async def test_relay_serve_missing_postgres_database_says_so(pg_server: str) -> None:
    """A reachable server without that database: the one line says it does not exist."""
    url = pg_server.rsplit("/", 1)[0] + "/no_such_db"
    lines = await _serve_fails(url)
    assert "no_such_db" in lines[0]
    assert "does not exist" in lines[0]


async def test_relay_serve_on_postgres_starts_and_names_the_store(pg_url: str) -> None:
    """--db postgresql://... starts the connector on PostgreSQL (the start line names the store)."""
    proc = await Proc(relay_cmd(free_port(), pg_url)).start()
    try:
        line = await proc.wait_for_line("hermes-relay serving on")
        assert "store postgresql://" in line
        await proc.wait_for_line("leader")
    finally:
        await proc.stop()
