"""SPEC 8.3 internal port: /metrics on METRICS_PORT only, a busy internal port fails the start,
/status needs a bearer from anywhere but loopback, and metrics hygiene (no _created series,
dial attempts as a counter)."""

from __future__ import annotations

import argparse
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from common.clock import FakeClock
from common.errors import StartupError
from gateway.cli import build_parser, main, metrics_port_of
from gateway.config import load_config
from gateway.http.auth import is_loopback, status_authorized
from gateway.http.server import SIDECAR, build_app
from gateway.http.server import status as status_handler
from gateway.metrics import Metrics
from gateway.runtime.sidecar import Sidecar
from tests.procs import fails_fast, free_port


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    env = {"HERMES_WAKE_SECRET": "w4ke"}
    sc = Sidecar(load_config(tmp_path, env), port=0, clock=FakeClock(), env=env, metrics_port=0)
    await sc.start()
    yield sc
    await sc.shutdown()


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_metrics_only_on_the_internal_port_without_created_series(sidecar: Sidecar) -> None:
    assert sidecar.metrics_port not in (None, 0, sidecar.port)
    code, text = await _get(f"http://127.0.0.1:{sidecar.metrics_port}/metrics")
    assert code == 200
    assert "hermes_watcher_state" in text
    assert "_created" not in text
    assert "# TYPE hermes_relay_dial_attempts_total counter" in text
    assert "hermes_relay_dial_attempts_total 0.0" in text
    code, _ = await _get(f"http://127.0.0.1:{sidecar.port}/metrics")
    assert code == 404
    for path in ("/healthz", "/status"):  # the app port keeps its surface (loopback: no bearer)
        code, _ = await _get(f"http://127.0.0.1:{sidecar.port}{path}")
        assert code == 200
    code, _ = await _get(f"http://127.0.0.1:{sidecar.metrics_port}/status")
    assert code == 404


async def test_no_internal_port_by_default_in_process(tmp_path: Path) -> None:
    sc = Sidecar(load_config(tmp_path, {}), port=0, clock=FakeClock(), env={})
    await sc.start()
    try:
        assert sc.metrics_port is None
        assert sc._internal_runner is None
    finally:
        await sc.shutdown()


async def test_busy_internal_port_fails_the_start_and_frees_the_app_port(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    app_port = free_port()
    try:
        port = busy.getsockname()[1]
        sc = Sidecar(load_config(tmp_path / "h", {}), port=app_port, env={}, metrics_port=port)
        with pytest.raises(
            StartupError, match=f"sidecar metrics: port {port} on 127.0.0.1 is already in use"
        ):
            await sc.start()
        assert not (tmp_path / "h").exists()  # failed before anything opened
        with socket.socket() as s:  # the app port was released
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", app_port))
    finally:
        busy.close()


async def test_run_with_a_busy_metrics_port_exits_1_with_one_line(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        lines = await fails_fast(
            ["run", "--port", str(free_port()), "--metrics-port", str(port)], tmp_path / "h"
        )
    finally:
        busy.close()
    errors = [line for line in lines if "error" in line]
    assert errors == [f"hermes-sidecar: error: sidecar metrics: port {port} on 127.0.0.1 is already in use"]


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["run"], {}, 9091),
        (["run", "--port", "8000"], {"METRICS_PORT": "9200"}, 9200),
        (["run", "--metrics-port", "9300"], {"METRICS_PORT": "9200"}, 9300),
        (["run", "--metrics-port", "0"], {}, None),
        (["run"], {"METRICS_PORT": "0"}, None),
        (["dev", "--port", "8000"], {}, 8002),
        (["dev", "--port", "8000", "--metrics-port", "0"], {}, None),
    ],
    ids=[
        "run-default",
        "run-env",
        "run-flag-beats-env",
        "run-flag-0-off",
        "run-env-0-off",
        "dev-port-plus-2",
        "dev-flag-0-off",
    ],
)
def test_metrics_port_resolution(argv: list[str], env: dict[str, str], expected: int | None) -> None:
    args = build_parser().parse_args(argv)
    args.port = int(args.port)
    assert metrics_port_of(args, env) == expected


def test_bad_metrics_port_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--metrics-port", "x"]) == 2
    monkeypatch.setenv("METRICS_PORT", "70000")
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[1].startswith("hermes-sidecar: error: METRICS_PORT: port '70000' is out of range")
    with pytest.raises(argparse.ArgumentTypeError):
        metrics_port_of(build_parser().parse_args(["run"]), {"METRICS_PORT": "nope"})


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["dev", "--port", "65535"], "--relay-port"), (["dev", "--port", "65534"], "--metrics-port")],
    ids=["no-room-for-the-connector", "no-room-for-metrics"],
)
def test_dev_port_without_room_for_its_derived_ports_exits_2(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dev --port 65535`` derived 65536 and 65537, which bound port 0 and port 1 and dialled an
    invalid URL forever; it is one line naming the flag to pass, exit 2 (found by
    ``python -m sim --fuzz``, issue #13)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("hermes-sidecar: error: --port ")
    assert err[0].endswith(f"is past 65535; pass {flag}")
    args = build_parser().parse_args(["dev", "--port", "65534", "--relay-port", "8081"])
    args.port = int(args.port)
    with pytest.raises(argparse.ArgumentTypeError):
        metrics_port_of(args, {})


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("fdaa::3", False),
        ("::ffff:10.0.0.5", False),
        ("fe80::1%eth0", False),
        ("", False),
        (None, False),
        ("garbage", False),
    ],
    ids=[
        "v4-loopback",
        "v4-loopback-range",
        "v6-loopback",
        "v4-mapped-loopback",
        "v4-private",
        "v6-ula",
        "v4-mapped-private",
        "v6-link-local-zone",
        "empty",
        "none",
        "garbage",
    ],
)
def test_is_loopback(remote: str | None, loopback: bool) -> None:
    assert is_loopback(remote) is loopback


def test_status_authorized_rules() -> None:
    def ok(remote: str, header: str | None, wake: str | None = "w") -> bool:
        return status_authorized(remote, header, admin_token="adm", wake_secret=wake)

    assert ok("127.0.0.1", None)
    assert not ok("10.0.0.5", None)
    assert ok("10.0.0.5", "Bearer adm")
    assert ok("10.0.0.5", "Bearer w")
    assert not ok("10.0.0.5", "Bearer nope")
    assert not ok("10.0.0.5", "adm")
    assert not ok("10.0.0.5", "Bearer ", wake="")
    assert not ok("10.0.0.5", "Bearer \udcff")


@pytest.mark.parametrize(
    ("header", "code"),
    [(None, 401), ("Bearer wrong", 401), ("Bearer w4ke", 200), ("admin", 200)],
    ids=["no-header", "wrong-bearer", "right-bearer", "admin-token"],
)
async def test_status_from_a_remote_address_needs_a_bearer(
    sidecar: Sidecar, header: str | None, code: int
) -> None:
    """From a non-loopback peer /status is 401 without the admin token or the wake secret."""
    if header == "admin":
        header = f"Bearer {sidecar.admin_token}"
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key, default=None: (
        ("10.1.2.3", 5555) if key == "peername" else default
    )
    app = build_app(sidecar)
    request = make_mocked_request(
        "GET", "/status", headers={"Authorization": header} if header else {}, app=app, transport=transport
    )
    assert request.app[SIDECAR] is sidecar
    before = await sidecar.status()
    resp = await status_handler(request)
    assert resp.status == code
    assert (await sidecar.status())["state"] == before["state"]


def test_dial_attempts_counter_follows_the_transport_count() -> None:
    m = Metrics()
    for seen in (1, 3, 2, 5):
        m.sync_dial_attempts(seen)
    assert m.relay_dials._value.get() == 5
