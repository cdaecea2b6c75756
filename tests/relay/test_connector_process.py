"""``hermes-relay serve`` as a real process: the durable buffer survives kill -9; start-up fails
fast with one line (SPEC 8.1)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.procs import Proc, free_port, relay_cmd
from tests.relay.helpers import RawGateway, post

MSG = {"chat_id": "c1", "user_id": "u1", "text": "hi", "message_id": "m"}


async def test_relay_buffer_survives_kill9_and_restart(tmp_path: Path) -> None:
    """Buffered entries (and the identity route) survive kill -9; acked ones never come back."""
    port, db = free_port(), str(tmp_path / "relay.db")
    base, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/relay"
    proc = await Proc(relay_cmd(port, db)).start()
    try:
        await proc.wait_for_line("hermes-relay serving on")
        first = RawGateway(ws)
        await first.connect(bot_id="b")
        ids = []
        for i in range(4):
            status, body = await post(f"{base}/ingress/relay/b", {**MSG, "message_id": i, "text": f"t{i}"})
            assert status == 202
            ids.append(body["buffer_id"])
        live = [await first.recv_type("inbound") for _ in range(4)]
        assert [f["bufferId"] for f in live] == ids
        await first.send({"type": "inbound_ack", "bufferId": ids[0]})
        # a round trip after the ack: the connector has handled it before we kill it
        await first.send(
            {"type": "outbound", "requestId": "0" * 32, "action": {"op": "typing", "chat_id": "c1"}}
        )
        await first.recv_type("outbound_result")
        await first.close()
        status, body = await post(f"{base}/ingress/relay/b", {**MSG, "message_id": 9, "text": "while gone"})
        assert (status, body["delivered"]) == (202, "buffered")
        ids.append(body["buffer_id"])
        proc.kill9()
        await proc.wait()
    finally:
        await proc.stop()
    proc2 = await Proc(relay_cmd(port, db)).start()
    try:
        await proc2.wait_for_line("hermes-relay serving on")
        again = RawGateway(ws)
        await again.connect(bot_id="b")
        replay = [await again.recv_type("inbound") for _ in range(4)]
        assert [f["bufferId"] for f in replay] == ids[1:]
        assert [f["event"]["text"] for f in replay] == ["t1", "t2", "t3", "while gone"]
        await again.close()
    finally:
        await proc2.stop()


async def test_relay_cli_rejects_bad_gateway_flag(tmp_path: Path) -> None:
    """A --gateway without '=' exits 2 naming the value."""
    proc = await Proc(
        [sys.executable, "-m", "relay", "serve", "--gateway", "nosecret", "--db", str(tmp_path / "r.db")]
    ).start()
    rc = await proc.wait()
    assert rc == 2
    assert "'nosecret'" in proc.output
    assert "ID=SECRET" in proc.output
    assert not (tmp_path / "r.db").exists()


async def test_relay_serve_on_a_busy_port_exits_fast_with_one_line(tmp_path: Path) -> None:
    """A port in use exits non-zero within 5 s, one line naming the port, no database made."""
    db = tmp_path / "r.db"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = await Proc(relay_cmd(port, str(db))).start()
        try:
            rc = await proc.wait(timeout=5)
        finally:
            await proc.stop()
    assert rc != 0
    lines = [line for line in proc.lines if line.strip()]
    assert len(lines) == 1, proc.output
    assert str(port) in lines[0]
    assert "in use" in lines[0]
    assert not db.exists()  # the port is bound before the store opens


@pytest.mark.parametrize(
    "kind", ["directory", "not-sqlite", "under-a-file"], ids=["directory", "not-sqlite", "under-a-file"]
)
async def test_relay_serve_with_an_unopenable_db_exits_1_with_one_line(tmp_path: Path, kind: str) -> None:
    """A --db that cannot be opened exits 1 within 5 s with one line naming the path."""
    db = tmp_path / "relay.db"
    if kind == "directory":
        db.mkdir()
    elif kind == "not-sqlite":
        db.write_bytes(b"this is not a database\n" * 200)
    else:
        (tmp_path / "file").write_text("x")
        db = tmp_path / "file" / "relay.db"
    proc = await Proc(relay_cmd(free_port(), str(db))).start()
    try:
        rc = await proc.wait(timeout=5)
    finally:
        await proc.stop()
    assert rc == 1
    lines = [line for line in proc.lines if line.strip()]
    assert len(lines) == 1, proc.output
    assert str(db) in lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--port", "nope"], "'nope'"),
        (["serve", "--bogus"], "--bogus"),
        ([], "command"),
        (["serve", "--retention-days", "0.5"], "'0.5' days: expected a finite number >= 1"),
        (["serve", "--retention-days", "inf"], "'inf' days"),
        (["serve", "--retention-days", "week"], "'week' is not a number of days"),
        (["serve", "--metrics-port", "70000"], "'70000' is not a port; expected 0 (off) or 1-65535"),
        (["serve", "--metrics-port", "nine"], "'nine' is not a port"),
        (["serve", "--port", "18765", "--metrics-port", "18765"], "--metrics-port 18765 is --port"),
    ],
    ids=[
        "bad-port",
        "unknown-flag",
        "no-command",
        "retention-below-a-day",
        "retention-inf",
        "retention-text",
        "metrics-port-range",
        "metrics-port-text",
        "metrics-port-is-port",
    ],
)
async def test_relay_cli_usage_error_is_one_line_exit_2(args: list[str], needle: str) -> None:
    """argparse errors exit 2 with a single line naming the bad value."""
    proc = await Proc([sys.executable, "-m", "relay", *args], env={"RELAY_GATEWAYS": ""}).start()
    rc = await proc.wait(timeout=5)
    assert rc == 2
    lines = [line for line in proc.lines if line.strip()]
    assert len(lines) == 1, proc.output
    assert needle in lines[0]
    assert lines[0].startswith("hermes-relay")


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("RELAY_RETENTION_DAYS", "-3", "RELAY_RETENTION_DAYS '-3' days"),
        ("RELAY_METRICS_PORT", "-1", "RELAY_METRICS_PORT '-1' is not a port"),
    ],
    ids=["retention", "metrics-port"],
)
async def test_relay_bad_env_value_is_one_line_exit_2(variable: str, value: str, needle: str) -> None:
    """RELAY_RETENTION_DAYS and RELAY_METRICS_PORT are checked like their flags, and the line
    names the variable."""
    env = {"RELAY_GATEWAYS": "", variable: value}
    proc = await Proc([sys.executable, "-m", "relay", "serve", "--port", str(free_port())], env=env).start()
    rc = await proc.wait(timeout=5)
    assert rc == 2
    lines = [line for line in proc.lines if line.strip()]
    assert len(lines) == 1, proc.output
    assert needle in lines[0]


async def test_relay_serve_metrics_port_answers_prometheus_text(tmp_path: Path) -> None:
    """With --metrics-port the process serves GET /metrics there (and only there): a stored
    message shows in the ingress counter and the gateway's unacked entries."""
    port, metrics_port = free_port(), free_port()
    proc = await Proc(relay_cmd(port, str(tmp_path / "r.db"), "--metrics-port", str(metrics_port))).start()
    try:
        await proc.wait_for_line("hermes-relay serving on")
        gw = RawGateway(f"ws://127.0.0.1:{port}/relay")
        await gw.connect(bot_id="b")
        await gw.close()
        status, body = await post(f"http://127.0.0.1:{port}/ingress/relay/b", {**MSG, "text": "hi"})
        assert (status, body["delivered"]) == (202, "buffered")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                assert r.status == 200
                text = await r.text()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 404  # not on the public port
        assert 'hermes_relay_ingress_total{delivered="buffered",platform="relay"} 1.0' in text
        assert 'hermes_relay_unacked_entries{gateway="dev"} 1.0' in text
    finally:
        await proc.stop()
