"""Idle watcher + real transport against the fake connector, every timer on a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.clock import FakeClock
from common.errors import TransitionError
from gateway.config import ScaleToZero, load_config
from gateway.core.activity import Activity
from gateway.core.policy import IdleInputs, idle_deadline, is_idle
from gateway.core.resume import ResumeDetector
from gateway.core.watcher import WatchEvent, WatchState, transition
from gateway.runtime.sidecar import Sidecar
from gateway.runtime.watcher import IdleWatcher
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport, TransportConfig
from relay.protocol import frames as F
from tests.relay.fakes import FakeConnector


def test_idle_predicate_boundary_counts_as_idle() -> None:
    """idle_for == timeout is idle; a job due within the timeout or running work is not."""
    base = IdleInputs(now=160.0, idle_since=100.0, busy=False, next_due_in=None, timeout=60.0)
    assert is_idle(base)
    assert not is_idle(IdleInputs(159.99, 100.0, False, None, 60.0))
    assert not is_idle(IdleInputs(160.0, 100.0, True, None, 60.0))
    assert not is_idle(IdleInputs(160.0, 100.0, False, 60.0, 60.0))
    assert is_idle(IdleInputs(160.0, 100.0, False, 60.01, 60.0))
    assert idle_deadline(IdleInputs(120.0, 100.0, False, None, 60.0)) == 160.0
    assert idle_deadline(IdleInputs(120.0, 100.0, True, None, 60.0)) is None
    # a job due within the timeout: wait for the scheduler's re-plan, never a past deadline
    assert idle_deadline(IdleInputs(190.0, 100.0, False, 0.0, 60.0)) is None
    # a job due in 100 s: re-check when it comes within one timeout (t=160) if that is first
    assert idle_deadline(IdleInputs(120.0, 110.0, False, 100.0, 60.0)) == 160.0


@pytest.mark.parametrize("idle_since", [1000.1, 0.3, 1_800_000_123.7, 12.345], ids=str)
def test_idle_at_the_deadline_it_gave_whatever_the_float_rounding(idle_since: float) -> None:
    """A watcher woken at ``idle_deadline`` is idle then (found by ``python -m sim``: with
    ``now - idle_since >= timeout`` some sums rounded down and the watcher spun forever)."""
    timeout = 60.0
    deadline = idle_deadline(IdleInputs(idle_since, idle_since, False, None, timeout))
    assert deadline is not None
    assert is_idle(IdleInputs(deadline, idle_since, False, None, timeout))


def test_watcher_table_has_no_stop_path_and_names_illegal_transitions() -> None:
    """Every state is one of live/draining/dormant; illegal events raise naming both."""
    assert transition(WatchState.LIVE, WatchEvent.IDLE) is WatchState.DRAINING
    assert transition(WatchState.DORMANT, WatchEvent.WOKEN) is WatchState.LIVE
    with pytest.raises(TransitionError, match="dormant.*|.*idle"):
        transition(WatchState.DORMANT, WatchEvent.IDLE)


def test_resume_detector_flags_wall_jumps_over_2s() -> None:
    """Wall moving 6 h while monotonic stands still is a resume; 1 s of drift is not."""
    d = ResumeDetector(wall=1000.0, mono=50.0)
    assert d.check(1001.0, 51.0) is None
    assert d.check(1002.5, 51.5) is None  # 1 s drift
    assert d.check(1002.5 + 6 * 3600, 51.5) == pytest.approx(6 * 3600)
    assert d.check(1002.5 + 6 * 3600 + 1, 52.5) is None


class Rig:
    """Watcher + activity + real transport on one FakeClock."""

    def __init__(self, fake: FakeConnector, *, timeout: float = 60.0, cooldown: float = 30.0):
        self.clock = FakeClock()
        self.activity = Activity(self.clock)
        self.t = RelayTransport(
            TransportConfig(url=fake.url, ping_interval_s=None, ack_timeout_s=10.0),
            on_inbound=self._on_inbound,
            clock=self.clock,
            uniform=lambda lo, hi: hi,
        )
        self.w = IdleWatcher(
            clock=self.clock,
            settings=ScaleToZero(enabled=True, idle_timeout_s=timeout, cooldown_s=cooldown),
            activity=self.activity,
            transport=self.t,
            blockers=[],
        )
        self.task: asyncio.Task[None] | None = None

    async def _on_inbound(self, batch: list[dict[str, Any]]) -> None:
        self.activity.inbound()

    async def start(self) -> None:
        await self.t.start()
        await self.until(lambda: self.t.state is ConnState.CONNECTED)
        self.task = asyncio.create_task(self.w.run())
        await self.clock.settle()

    async def until(self, pred: Any) -> None:
        await asyncio.wait_for(self.t.wait_until(pred), 10)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.t.disconnect()


@pytest.fixture
async def fake() -> AsyncIterator[FakeConnector]:
    async with FakeConnector() as f:
        yield f


@pytest.fixture
async def rig(fake: FakeConnector) -> AsyncIterator[Rig]:
    r = Rig(fake)
    yield r
    await r.stop()


async def test_watcher_flips_exactly_at_the_idle_timeout(rig: Rig, fake: FakeConnector) -> None:
    """Process start starts the idle clock; at t=60 s (the boundary) the watcher flips."""
    await rig.start()
    # t=59.99 s: not yet
    await rig.clock.advance(59.99)
    assert rig.w.state is WatchState.LIVE
    assert fake.of_type("going_idle") == []
    # t=60 s: boundary counts as idle -> draining -> ack -> dormant
    await rig.clock.advance(0.01)
    await rig.until(lambda: rig.w.state is WatchState.DORMANT)
    assert len(fake.of_type("going_idle")) == 1
    assert rig.t.state is ConnState.DORMANT
    assert rig.t.last_close_reason == "dormant"


async def test_watcher_flips_at_a_deadline_whose_float_sum_rounds_down(rig: Rig) -> None:
    """The fake clock's rare hang (about 1 run in 100 of the sidecar cron tests): the last
    activity at t=1000.1 makes the idle deadline 1060.1, where ``now - idle_since`` is
    59.99999999999989; the watcher woke, found itself not idle and looked again at once,
    forever (the clock never moves by itself), so the flip never came. Found again by
    ``python -m sim`` (seed 3); now the check and the deadline use the same sum."""
    await rig.start()
    await rig.clock.advance(0.1)
    rig.activity.inbound()
    loops = rig.w.loops
    await rig.clock.advance(60.0)
    await rig.until(lambda: rig.w.state is WatchState.DORMANT)
    assert rig.w.loops - loops < 10


async def test_watcher_waits_quietly_while_the_relay_is_down_then_flips(
    rig: Rig, fake: FakeConnector
) -> None:
    """Idle timeout passed while the relay is not connected: the watcher waits for the
    transport (no busy loop burning CPU during a long backoff), then flips once it is up."""
    rig.task = asyncio.create_task(rig.w.run())  # the transport is not started: no socket
    await rig.clock.advance(120)
    before = rig.w.loops
    await rig.clock.settle(200)
    assert rig.w.loops - before == 0
    assert fake.of_type("going_idle") == []
    await rig.t.start()  # connecting is the kick: the idle deadline is long past, so it flips
    await rig.until(lambda: rig.t.state is ConnState.DORMANT)
    await rig.clock.settle()
    assert rig.w.state is WatchState.DORMANT
    assert len(fake.of_type("going_idle")) == 1


async def test_watcher_poke_does_not_reset_idle_clock(rig: Rig, fake: FakeConnector) -> None:
    """A poke at t=30 s leaves the flip at t=60 s; an inbound at t=30 s moves it to t=90 s."""
    await rig.start()
    await rig.clock.advance(30)
    assert rig.w.wake("poke") is False  # live: nothing to wake
    await rig.clock.advance(30)
    await rig.until(lambda: rig.w.state is WatchState.DORMANT)
    assert len(fake.of_type("going_idle")) == 1


async def test_watcher_inbound_resets_idle_clock(rig: Rig, fake: FakeConnector) -> None:
    """Real inbound at t=30 s: no flip at t=60 s, flip at t=90 s."""
    await rig.start()
    await rig.clock.advance(30)
    await fake.send(F.inbound({"text": "hi"}, "b1"))
    await fake.wait_until(lambda: len(fake.of_type("inbound_ack")) == 1)
    await rig.clock.advance(30)
    assert rig.w.state is WatchState.LIVE
    await rig.clock.advance(30)
    await rig.until(lambda: rig.w.state is WatchState.DORMANT)


async def test_watcher_inbound_while_draining_aborts_and_rehandshakes(rig: Rig, fake: FakeConnector) -> None:
    """Inbound after going_idle (before the ack): back to live through close + re-handshake."""
    fake.ack_going_idle = False
    await rig.start()
    await rig.clock.advance(60)
    await fake.wait_until(lambda: len(fake.of_type("going_idle")) == 1)
    assert rig.w.state is WatchState.DRAINING
    await fake.send(F.inbound({"text": "late"}, "b9"))
    await rig.until(
        lambda: (
            rig.w.state is WatchState.LIVE and rig.t.dial_attempts == 2 and rig.t.state is ConnState.CONNECTED
        )
    )
    assert fake.dials == 2
    assert rig.t.backoff_delays == []  # re-handshake at once, not a backoff


async def test_watcher_no_flip_during_cooldown_after_wake(rig: Rig, fake: FakeConnector) -> None:
    """After a wake, the 30 s cooldown holds the next flip even though idle is reached."""
    rig.w.settings.idle_timeout_s = 10.0
    await rig.start()
    await rig.clock.advance(10)
    await rig.until(lambda: rig.w.state is WatchState.DORMANT)
    # t=10 s: poke -> live, cooldown until t=40 s
    assert rig.w.wake("poke")
    await rig.until(lambda: rig.t.state is ConnState.CONNECTED)
    await rig.clock.advance(29.9)
    assert rig.w.state is WatchState.LIVE
    assert len(fake.of_type("going_idle")) == 1
    await rig.clock.advance(0.1)
    await rig.until(lambda: rig.w.state is WatchState.DORMANT)
    assert len(fake.of_type("going_idle")) == 2


async def test_watcher_dormant_stays_dormant_without_a_wake(rig: Rig, fake: FakeConnector) -> None:
    """Dormant for a day: no dial, no timer, no stop."""
    await rig.start()
    await rig.clock.advance(60)
    await rig.until(lambda: rig.w.state is WatchState.DORMANT)
    await rig.clock.advance(24 * 3600)
    assert fake.dials == 1
    assert rig.w.state is WatchState.DORMANT


async def test_sidecar_resume_jump_redials(tmp_path: Path, fake: FakeConnector) -> None:
    """Wall jumps 6 h while monotonic stands still: the next request sees it and re-dials."""
    clock = FakeClock()
    config = load_config(
        tmp_path,
        {
            "HERMES_SCALE_TO_ZERO": "1",
            "GATEWAY_RELAY_URL": fake.url.replace("ws://", "http://"),
            "GATEWAY_RELAY_WAKE_URL": "http://127.0.0.1:1/wake",
        },
    )
    config.scale_to_zero.idle_timeout_s = 60
    sc = Sidecar(config, host="127.0.0.1", port=0, clock=clock, env={})
    await sc.start()
    try:
        assert sc.transport is not None
        await asyncio.wait_for(sc.transport.wait_until(lambda: sc.transport.connected), 10)
        await clock.advance(60)
        await asyncio.wait_for(sc.transport.wait_until(lambda: sc.transport.state is ConnState.DORMANT), 10)
        assert sc.watcher.state is WatchState.DORMANT
        clock.jump_wall(6 * 3600)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sc.port}/healthz") as r:
            assert r.status == 200
        await asyncio.wait_for(sc.transport.wait_until(lambda: sc.transport.connected), 10)
        assert fake.dials == 2
        assert sc.watcher.state is WatchState.LIVE
    finally:
        await sc.shutdown()


async def test_watcher_holds_the_flip_until_the_announced_replay_is_persisted(
    fake: FakeConnector,
) -> None:
    """Cooldown 0 and a descriptor announcing 2 buffered entries: no going_idle until both are
    persisted, although the idle deadline is long past (PROTOCOL 7.2)."""
    fake.descriptor_overrides = {"buffered": 2}
    r = Rig(fake, timeout=5.0, cooldown=0.0)
    try:
        await r.start()
        await r.clock.advance(9)  # t=9 s: idle past the 5 s timeout, but the replay is owed
        assert fake.of_type("going_idle") == []
        assert r.t.replaying
        await fake.send(F.inbound({"text": "one"}, "b1"))
        await fake.wait_until(lambda: len(fake.of_type("inbound_ack")) == 1)
        assert fake.of_type("going_idle") == []
        await fake.send(F.inbound({"text": "two"}, "b2"))
        # both persisted (they reset the idle clock): the flip comes one timeout later
        await fake.wait_until(lambda: len(fake.of_type("inbound_ack")) == 2)
        assert not r.t.replaying
        await r.clock.advance(5)  # t=14 s: one timeout after the last replayed message
        await r.until(lambda: r.w.state is WatchState.DORMANT)
    finally:
        await r.stop()


async def test_watcher_replay_window_closes_after_the_ack_timeout(fake: FakeConnector) -> None:
    """An announced replay that never comes holds the flip for ack_timeout_s (10 s), no more."""
    fake.descriptor_overrides = {"buffered": 3}
    r = Rig(fake, timeout=5.0, cooldown=0.0)
    try:
        await r.start()
        await r.clock.advance(9.9)
        assert fake.of_type("going_idle") == []
        await r.clock.advance(0.1)  # t=10 s: the window closes; idle since t=0 -> flip
        await r.until(lambda: r.w.state is WatchState.DORMANT)
    finally:
        await r.stop()


async def test_watcher_ack_timeout_zero_pauses_between_aborted_flips(fake: FakeConnector) -> None:
    """A connector that never acks and ack_timeout 0: aborted flips come at most once a
    second, not in a re-dial loop."""
    fake.ack_going_idle = False
    r = Rig(fake, timeout=1.0, cooldown=0.0)
    r.t.config.ack_timeout_s = 0.0
    try:
        await r.start()
        for _ in range(10):  # t=0..10 s in 1 s steps
            await r.clock.advance(1.0)
        await r.clock.settle(50)
        assert 1 <= len(fake.of_type("going_idle")) <= 11
        assert fake.dials <= 12
    finally:
        await r.stop()


async def test_watcher_poke_during_a_flip_wakes_once_the_flip_completes(
    rig: Rig, fake: FakeConnector
) -> None:
    """A poke while going_idle awaits its ack is kept: after the ack the sidecar re-dials."""
    fake.ack_going_idle = False
    await rig.start()
    await rig.clock.advance(60)
    await fake.wait_until(lambda: len(fake.of_type("going_idle")) == 1)
    assert rig.w.state is WatchState.DRAINING
    assert rig.w.wake("poke")  # kept for when the flip completes
    await fake.send(F.going_idle_ack())
    await rig.until(lambda: fake.dials == 2 and rig.t.state is ConnState.CONNECTED)
    assert rig.w.state is WatchState.LIVE
