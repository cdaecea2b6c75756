"""Start-up fails fast (SPEC 8.1): the real CLI exits non-zero within 5 s with one line naming
the cause, no traceback, and nothing left listening."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import StartupError
from gateway.config import load_config
from tests.procs import fails_fast, free_port


@pytest.fixture
def busy() -> Iterator[tuple[int, socket.socket]]:
    """A port on 127.0.0.1 held by a bound, listening socket."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1], s
    s.close()


def one_line_with(lines: list[str], *needles: str) -> str:
    """The single output line holding every needle (there must be exactly one)."""
    hits = [line for line in lines if all(n in line for n in needles)]
    assert len(hits) == 1, "\n".join(lines)
    assert hits[0].startswith("hermes-sidecar: error: "), hits[0]
    return hits[0]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_startup_run_busy_port_exits_with_one_line(
    tmp_path: Path, busy: tuple[int, socket.socket]
) -> None:
    """``run`` on a port in use exits 1 naming the port, and writes no state."""
    port, _ = busy
    lines = await fails_fast(["run", "--port", str(port)], tmp_path / "home")
    one_line_with(lines, "already in use", str(port))
    assert not (tmp_path / "home" / "state.db").exists()


async def test_startup_run_home_beneath_a_file_exits_with_one_line(tmp_path: Path) -> None:
    """``run`` with ``$HERMES_HOME`` under a regular file exits naming HERMES_HOME."""
    (tmp_path / "plain").write_text("not a folder")
    home = tmp_path / "plain" / "home"
    port = free_port()
    lines = await fails_fast(["run", "--port", str(port)], home)
    one_line_with(lines, "HERMES_HOME", str(home))
    assert port_is_free(port)


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda p: p.mkdir(), "is unreadable"),
        (lambda p: p.write_text("model: [unclosed\n"), "is not valid YAML"),
        (lambda p: p.write_text("- just\n- a list\n"), "is not a mapping"),
        (lambda p: p.write_bytes(b"model: \xff\xfe\n"), "is not UTF-8"),
    ],
    ids=["directory", "yaml-syntax", "not-mapping", "not-utf8"],
)
async def test_startup_run_unreadable_config_exits_with_one_line(
    tmp_path: Path, make: object, cause: str
) -> None:
    """``run`` with a config.yaml that cannot be used exits naming the file and the cause."""
    home = tmp_path / "home"
    home.mkdir()
    make(home / "config.yaml")  # type: ignore[operator]
    port = free_port()
    lines = await fails_fast(["run", "--port", str(port)], home)
    one_line_with(lines, "config.yaml", cause)
    assert port_is_free(port)
    assert not (home / "state.db").exists()


async def test_startup_dev_busy_sidecar_port_exits_and_frees_connector(
    tmp_path: Path, busy: tuple[int, socket.socket]
) -> None:
    """``dev`` with the sidecar port in use exits naming it, and the connector port is released."""
    port, _ = busy
    relay_port = free_port()
    lines = await fails_fast(["dev", "--port", str(port), "--relay-port", str(relay_port)], tmp_path / "home")
    one_line_with(lines, "already in use", str(port))
    assert port_is_free(relay_port)


async def test_startup_dev_busy_connector_port_exits_with_one_line(
    tmp_path: Path, busy: tuple[int, socket.socket]
) -> None:
    """``dev`` with the connector port in use exits naming that port before opening anything."""
    relay_port, _ = busy
    port = free_port()
    lines = await fails_fast(["dev", "--port", str(port), "--relay-port", str(relay_port)], tmp_path / "home")
    line = one_line_with(lines, "already in use", str(relay_port))
    assert "dev connector" in line
    assert port_is_free(port)
    assert not (tmp_path / "home" / "relay.db").exists()


@pytest.mark.parametrize(
    ("body", "cause"),
    [("model: [unclosed\n", "is not valid YAML"), ("[1, 2]\n", "is not a mapping")],
    ids=["bad-yaml", "not-mapping"],
)
def test_load_config_strict_raises_startup_error(tmp_path: Path, body: str, cause: str) -> None:
    """``strict=True`` turns an unusable file into StartupError naming it; lenient mode warns."""
    (tmp_path / "config.yaml").write_text(body)
    with pytest.raises(StartupError) as err:
        load_config(tmp_path, {}, strict=True)
    assert str(tmp_path / "config.yaml") in str(err.value)
    assert cause in str(err.value)
    c = load_config(tmp_path, {})
    assert len(c.warnings) == 1
    assert cause in c.warnings[0]


def test_load_config_strict_keeps_bad_values_lenient(tmp_path: Path) -> None:
    """Even strict, an invalid value falls back to its default with a warning."""
    (tmp_path / "config.yaml").write_text("cron: {max_concurrent: -1}\n")
    c = load_config(tmp_path, {}, strict=True)
    assert c.cron_max_concurrent == 4
    assert any("cron.max_concurrent" in w for w in c.warnings)
    assert load_config(tmp_path / "missing", {}, strict=True).warnings == []


async def test_startup_run_until_signal_shuts_down_after_failed_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed ``start()`` prints one error line, tries ``shutdown()`` (bounded) and returns 1."""
    from gateway.cli import run as cli_run
    from gateway.cli.run import run_until_signal

    monkeypatch.setattr(cli_run, "START_FAILED_SHUTDOWN_S", 0.2)

    calls: list[str] = []

    class Broken:
        config = None
        env: dict[str, str] = {"HERMES_WAKE_SECRET": "w4ke-secret"}

        def request_stop(self) -> None:
            calls.append("stop")

        async def start(self) -> None:
            raise StartupError("cannot open w4ke-secret state")

        async def shutdown(self) -> None:
            calls.append("shutdown")
            await asyncio.sleep(3600)  # a shutdown that hangs is cut off

    started = time.monotonic()
    assert await run_until_signal(Broken()) == 1
    assert time.monotonic() - started < 2
    assert calls == ["shutdown"]
    err = capsys.readouterr().err.splitlines()
    assert err == ["hermes-sidecar: error: cannot open [redacted] state"]
