"""Client transport against an in-process fake connector, timers on a FakeClock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from common.clock import FakeClock
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport, TransportConfig
from relay.protocol import frames as F
from relay.protocol.token import verify_token
from tests.relay.fakes import FakeConnector

CEILING = staticmethod(lambda lo, hi: hi)


_harnesses: list[Harness] = []


@pytest.fixture
async def fake() -> AsyncIterator[FakeConnector]:
    async with FakeConnector() as f:
        yield f
        for h in _harnesses:
            await h.t.disconnect()
        _harnesses.clear()


class Harness:
    def __init__(self, fake: FakeConnector, **cfg: Any) -> None:
        self.clock = FakeClock()
        self.inbound: list[dict[str, Any]] = []
        self.fail_next_batch = False
        self.handler_gate: asyncio.Event | None = None
        self.raised = asyncio.Event()
        cfg.setdefault("ping_interval_s", None)
        self.t = RelayTransport(
            TransportConfig(url=fake.url, **cfg),
            on_inbound=self._on_inbound,
            clock=self.clock,
            uniform=lambda lo, hi: hi,
        )
        _harnesses.append(self)

    async def _on_inbound(self, batch: list[dict[str, Any]]) -> None:
        if self.handler_gate is not None:
            await self.handler_gate.wait()
        if self.fail_next_batch:
            self.fail_next_batch = False
            self.raised.set()
            raise RuntimeError("handler exploded")
        self.inbound.extend(batch)

    async def until(self, pred: Any) -> None:
        await asyncio.wait_for(self.t.wait_until(pred), 10)


async def _connected(h: Harness) -> None:
    await h.until(lambda: h.t.state is ConnState.CONNECTED)


async def test_transport_backoff_doubles_1_2_4_8_with_jitter_at_ceiling(fake: FakeConnector) -> None:
    """Refused dials back off exactly 1, 2, 4, 8 s, and no dial happens before the delay."""
    fake.default = "refuse"
    h = Harness(fake)
    await h.t.start()
    for n, expected in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        await h.until(lambda n=n: len(h.t.backoff_delays) == n)
        assert h.t.backoff_delays[-1] == expected
        dials = h.t.dial_attempts
        # t += delay - 10 ms: still backing off, no dial yet
        await h.clock.advance(expected - 0.01)
        assert h.t.dial_attempts == dials
        await h.clock.advance(0.01)
        await h.until(lambda d=dials: h.t.dial_attempts == d + 1)
    assert h.t.backoff_delays[:4] == [1.0, 2.0, 4.0, 8.0]
    await h.t.disconnect()


async def test_transport_backoff_caps_at_30s() -> None:
    """The delay ceiling never passes 30 s, and jitter stays in [d/2, d]."""
    from relay.client.backoff import Backoff

    draws: list[tuple[float, float]] = []
    b = Backoff(uniform=lambda lo, hi: draws.append((lo, hi)) or lo)
    delays = [b.next_delay() for _ in range(8)]
    assert delays == [0.5, 1, 2, 4, 8, 15, 15, 15]
    assert draws[-1] == (15.0, 30.0)


async def test_transport_60s_stable_connection_resets_backoff(fake: FakeConnector) -> None:
    """After 60 s connected the next failure waits 1 s again; after 59 s it keeps doubling."""
    fake.script = ["refuse", "refuse", "accept", "accept"]
    h = Harness(fake)
    await h.t.start()
    await h.until(lambda: len(h.t.backoff_delays) == 1)
    await h.clock.advance(1)
    await h.until(lambda: len(h.t.backoff_delays) == 2)
    await h.clock.advance(2)
    await _connected(h)
    # t=59 s connected: not yet stable; the close keeps the doubling (next is 4 s)
    await h.clock.advance(59)
    await fake.close(1011, "boom")
    await h.until(lambda: len(h.t.backoff_delays) == 3)
    assert h.t.backoff_delays[-1] == 4.0
    await h.clock.advance(4)
    await _connected(h)
    # t=60 s connected: stable, so the attempt count resets
    await h.clock.advance(60)
    await fake.close(1011, "boom")
    await h.until(lambda: len(h.t.backoff_delays) == 4)
    assert h.t.backoff_delays[-1] == 1.0
    await h.t.disconnect()


async def test_transport_two_4401_after_handshake_latch_revoked_after_2_dials(
    fake: FakeConnector,
) -> None:
    """4401 on a handshaken socket -> one immediate re-dial; a second 4401 latches revoked."""
    fake.script = ["accept", ("close", 4401, "unauthorized")]
    h = Harness(fake, gateway_id="gw", secret="s")
    await h.t.start()
    await _connected(h)
    await fake.close(4401, "unauthorized")
    await h.until(lambda: h.t.state is ConnState.REVOKED)
    assert h.t.dial_attempts == 2
    assert fake.dials == 2
    assert h.t.backoff_delays == []  # the strike re-dial was immediate
    await h.clock.advance(3600)
    assert fake.dials == 2  # latched: no more dials
    await h.t.disconnect()


async def test_transport_4401_expired_three_times_never_latches(fake: FakeConnector) -> None:
    """'expired' is an ordinary reconnect every time."""
    fake.script = [
        "accept",
        ("close", 4401, "expired"),
        ("close", 4401, "expired"),
        ("close", 4401, "expired"),
        "accept",
    ]
    h = Harness(fake, gateway_id="gw", secret="s")
    await h.t.start()
    await _connected(h)
    await fake.close(4401, "expired")
    for n in range(1, 5):
        await h.until(lambda n=n: len(h.t.backoff_delays) == n)
        await h.clock.advance(h.t.backoff_delays[-1])
    await _connected(h)
    assert h.t.dial_attempts == 5
    assert h.t.state is ConnState.CONNECTED
    await h.t.disconnect()


async def test_transport_4401_before_first_handshake_retries_with_backoff(
    fake: FakeConnector,
) -> None:
    """Unauthorized before any handshake succeeded: backoff 1, 2, 4, never revoked."""
    fake.default = ("close", 4401, "unauthorized")
    h = Harness(fake, gateway_id="gw", secret="s")
    await h.t.start()
    for n in range(1, 4):
        await h.until(lambda n=n: len(h.t.backoff_delays) == n)
        assert h.t.state is ConnState.BACKOFF
        await h.clock.advance(h.t.backoff_delays[-1])
    assert h.t.backoff_delays[:3] == [1.0, 2.0, 4.0]
    assert h.t.state is not ConnState.REVOKED
    await h.t.disconnect()


async def test_transport_sends_hellos_wake_url_and_a_fresh_valid_token(fake: FakeConnector) -> None:
    """One hello per identity in order, with wakeUrl, and a bearer the connector verifies."""
    h = Harness(
        fake,
        gateway_id="gw",
        secret="s",
        wake_url="https://me.fly.dev/wake",
        identities=[("relay", ""), ("telegram", "bot7")],
    )
    await h.t.start()
    await _connected(h)
    await fake.wait_until(lambda: len(fake.of_type("hello")) == 2)
    assert [(f["platform"], f["botId"], f["wakeUrl"]) for f in fake.of_type("hello")] == [
        ("relay", "", "https://me.fly.dev/wake"),
        ("telegram", "bot7", "https://me.fly.dev/wake"),
    ]
    token = fake.headers[0]["Authorization"].removeprefix("Bearer ")
    assert verify_token(token, {"gw": "s"}, h.clock.wall()) == "gw"
    assert h.t.supports_wake_at
    await h.t.disconnect()


async def test_transport_no_auth_header_without_id_and_secret(fake: FakeConnector) -> None:
    """Upgrade auth is sent only when both id and secret are set."""
    h = Harness(fake, gateway_id="gw")
    await h.t.start()
    await _connected(h)
    assert "Authorization" not in fake.headers[0]
    await h.t.disconnect()


async def test_transport_handshake_times_out_after_30s(fake: FakeConnector) -> None:
    """No descriptor within 30 s: close and back off."""
    fake.script = ["silent", "accept"]
    h = Harness(fake)
    await h.t.start()
    await h.until(lambda: h.t.state is ConnState.HANDSHAKING)
    await h.clock.advance(29.9)
    assert h.t.state is ConnState.HANDSHAKING
    await h.clock.advance(0.1)
    await h.until(lambda: h.t.state is ConnState.BACKOFF)
    await h.clock.advance(1)
    await _connected(h)
    await h.t.disconnect()


async def test_transport_descriptor_missing_keys_fails_handshake(fake: FakeConnector) -> None:
    """A descriptor without its required keys is a handshake failure (backoff)."""
    fake.descriptor_overrides = {}
    h = Harness(fake)
    orig = F.descriptor

    def broken(platform: str, **kw: Any) -> dict[str, Any]:
        d = orig(platform, **kw)
        del d["descriptor"]["contract_version"]
        return d

    import tests.relay.fakes as fakes_mod

    fakes_mod.F.descriptor = broken  # type: ignore[assignment]
    try:
        await h.t.start()
        await h.until(lambda: h.t.state is ConnState.BACKOFF)
    finally:
        fakes_mod.F.descriptor = orig  # type: ignore[assignment]
    await h.clock.advance(1)
    await _connected(h)
    await h.t.disconnect()


async def test_transport_lost_going_idle_ack_rehandshakes(fake: FakeConnector) -> None:
    """No going_idle_ack within 10 s: close and re-handshake at once, never half-flipped."""
    fake.ack_going_idle = False
    h = Harness(fake, ack_timeout_s=10.0)
    await h.t.start()
    await _connected(h)
    flip = asyncio.create_task(h.t.go_dormant(wake_at=h.clock.wall() + 600))
    await fake.wait_until(lambda: len(fake.of_type("going_idle")) == 1)
    assert fake.of_type("going_idle")[0]["wakeAt"].endswith("Z")
    assert h.t.state is ConnState.FLIPPING
    await h.clock.advance(10)
    assert await flip is False
    await h.until(lambda: h.t.dial_attempts == 2 and h.t.state is ConnState.CONNECTED)
    assert h.t.backoff_delays == []
    await h.t.disconnect()


async def test_transport_abort_flip_rehandshakes(fake: FakeConnector) -> None:
    """Work arriving after going_idle: abort_flip closes and re-handshakes."""
    fake.ack_going_idle = False
    h = Harness(fake)
    await h.t.start()
    await _connected(h)
    flip = asyncio.create_task(h.t.go_dormant())
    await fake.wait_until(lambda: len(fake.of_type("going_idle")) == 1)
    assert h.t.abort_flip("inbound arrived")
    assert await flip is False
    await h.until(lambda: h.t.dial_attempts == 2 and h.t.state is ConnState.CONNECTED)
    await h.t.disconnect()


async def test_transport_dormant_never_dials_until_wake(fake: FakeConnector) -> None:
    """After go_dormant no timer re-dials, for hours; wake() re-dials at once."""
    h = Harness(fake)
    await h.t.start()
    await _connected(h)
    assert await h.t.go_dormant() is True
    assert h.t.state is ConnState.DORMANT
    assert h.t.last_close_code == 1000
    assert h.t.last_close_reason == "dormant"
    await h.clock.advance(6 * 3600)
    assert fake.dials == 1
    assert h.t.dial_attempts == 1
    assert h.clock.pending == []  # nothing is even scheduled
    assert h.t.wake("poke")
    await _connected(h)
    assert fake.dials == 2
    await h.t.disconnect()


async def test_transport_bad_frames_and_raising_handler_leave_reader_running(
    fake: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, non-objects, type-less frames and a raising handler do not stop the reader."""
    h = Harness(fake)
    await h.t.start()
    await _connected(h)
    with caplog.at_level(logging.WARNING, logger="relay.transport"):
        await fake.send('this is not json\n[1,2,3]\n{"no":"type"}\n{"type":"mystery"}\n')
        await fake.send("not json again\n")
        h.fail_next_batch = True
        await fake.send(F.inbound({"text": "first"}, "b1"))
        await asyncio.wait_for(h.raised.wait(), 10)
        await fake.send(F.inbound({"text": "second"}, "b2"))
        await fake.wait_until(lambda: len(fake.of_type("inbound_ack")) == 1)
    assert h.inbound[0]["event"]["text"] == "second"
    assert fake.of_type("inbound_ack") == [{"type": "inbound_ack", "bufferId": "b2"}]
    assert h.t.state is ConnState.CONNECTED
    assert fake.dials == 1
    drops = [r for r in caplog.records if "dropped a frame" in r.getMessage()]
    assert len(drops) == 3  # not_json, not_object, no_type: once per kind per minute
    await h.t.disconnect()


async def test_transport_slow_inbound_handler_does_not_block_outbound_results(
    fake: FakeConnector,
) -> None:
    """While the inbound handler is stuck, outbound results still resolve."""
    h = Harness(fake)
    h.handler_gate = asyncio.Event()
    await h.t.start()
    await _connected(h)
    await fake.send(F.inbound({"text": "hi"}, "b1"))
    send = asyncio.create_task(h.t.send_outbound({"op": "send", "chat_id": "c", "content": "x"}))
    await fake.wait_until(lambda: len(fake.of_type("outbound")) == 1)
    rid = fake.of_type("outbound")[0]["requestId"]
    assert len(rid) == 32
    await fake.send(F.outbound_result(rid, {"success": True, "message_id": "m1"}))
    assert await asyncio.wait_for(send, 5) == {"success": True, "message_id": "m1"}
    assert fake.of_type("inbound_ack") == []  # the handler has not persisted yet
    h.handler_gate.set()
    await fake.wait_until(lambda: len(fake.of_type("inbound_ack")) == 1)
    await h.t.disconnect()


async def test_transport_outbound_local_failures(fake: FakeConnector) -> None:
    """Not connected, timed out (30 s) and connection lost never hang a caller."""
    h = Harness(fake)
    assert await h.t.send_outbound({"op": "typing", "chat_id": "c"}) == F.NOT_CONNECTED
    await h.t.start()
    await _connected(h)
    pending = asyncio.create_task(h.t.send_outbound({"op": "typing", "chat_id": "c"}))
    await fake.wait_until(lambda: len(fake.of_type("outbound")) == 1)
    await h.clock.advance(30)
    assert await pending == F.TIMED_OUT
    lost = asyncio.create_task(h.t.send_outbound({"op": "typing", "chat_id": "c"}))
    await fake.wait_until(lambda: len(fake.of_type("outbound")) == 2)
    await fake.close(1011, "gone")
    assert await asyncio.wait_for(lost, 5) == F.CONNECTION_LOST
    await h.t.disconnect()


async def test_transport_oversized_frame_closes_1009_and_redials_with_backoff(
    fake: FakeConnector,
) -> None:
    """A message over max_frame_bytes closes 1009; the re-dial waits for backoff."""
    h = Harness(fake, max_frame_bytes=1024)
    await h.t.start()
    await _connected(h)
    await fake.send(F.inbound({"text": "x" * 2000}, "big"))
    await h.until(lambda: h.t.state is ConnState.BACKOFF)
    assert h.t.last_close_code == 1009
    assert fake.dials == 1
    await h.clock.advance(h.t.backoff_delays[-1])
    await _connected(h)
    assert fake.dials == 2
    assert h.inbound == []
    await h.t.disconnect()


async def test_transport_oversized_ndjson_line_across_messages_closes_1009(
    fake: FakeConnector,
) -> None:
    """A line split over small messages that grows past the limit also closes 1009."""
    h = Harness(fake, max_frame_bytes=1024)
    await h.t.start()
    await _connected(h)
    for _ in range(3):
        await fake.send('{"type":"inbound","event":{"text":"' + "y" * 500)
    await h.until(lambda: h.t.state is ConnState.BACKOFF)
    assert h.t.last_close_code == 1009
    await h.t.disconnect()


async def test_transport_keepalive_closes_after_60s_silence(fake: FakeConnector) -> None:
    """Pings every 30 s; nothing heard for more than 60 s closes the socket (backoff)."""
    fake.autoping = False  # a peer that never answers pings
    h = Harness(fake, ping_interval_s=30.0, pong_timeout_s=60.0)
    await h.t.start()
    await _connected(h)
    # t=60 s: 60 s of silence is still within the deadline
    await h.clock.advance(60)
    assert h.t.state is ConnState.CONNECTED
    # t=90 s: the next ping tick finds 90 s of silence and closes
    await h.clock.advance(30)
    await h.until(lambda: h.t.state is ConnState.BACKOFF)
    assert h.t.last_close_code == 1011
    await h.t.disconnect()


async def test_transport_unexpected_close_backs_off_and_4409_never_latches(
    fake: FakeConnector,
) -> None:
    """A 4409 'replaced' on the current socket is an ordinary reconnect."""
    h = Harness(fake, gateway_id="gw", secret="s")
    await h.t.start()
    await _connected(h)
    await fake.close(4409, "replaced")
    await h.until(lambda: h.t.state is ConnState.BACKOFF)
    await h.clock.advance(1)
    await _connected(h)
    await h.t.disconnect()
