"""State history: wake latency (what ends a wake), the queued writer (a failed write is one
WARNING and never reaches the watcher), retention, and the hooks of a real sidecar through a
sleep and a wake against a fake connector."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.clock import FakeClock
from common.sqlite import read_all
from gateway.config import load_config
from gateway.core.watcher import WatchState
from gateway.ops import wakes as W
from gateway.ops.history import HistoryStore
from gateway.ops.wakes import WakeResult, WakeTracker
from gateway.runtime.sidecar import Sidecar
from gateway.statedb import open_state_db
from relay.client.machine import ConnState
from relay.protocol import frames as F
from tests.relay.fakes import FakeConnector


def _tracker() -> tuple[FakeClock, WakeTracker, list[WakeResult]]:
    clock = FakeClock()
    done: list[WakeResult] = []
    return clock, WakeTracker(clock, done.append), done


async def test_wake_ends_at_relay_connected_when_nothing_was_buffered() -> None:
    clock, t, done = _tracker()
    t.started("poke", relay=True)
    t.relay_changed(connected=False, replaying=False)  # dialing
    await clock.advance(0.004)
    t.relay_changed(connected=True, replaying=False)
    assert [(d.trigger, d.ended_by) for d in done] == [("poke", W.CONNECTED)]
    assert done[0].latency_s == pytest.approx(0.004)


async def test_wake_ends_at_the_first_replayed_inbound_when_something_was_buffered() -> None:
    clock, t, done = _tracker()
    t.started("due job", relay=True)
    await clock.advance(0.003)
    t.relay_changed(connected=True, replaying=True)
    assert done == []
    await clock.advance(0.002)
    t.inbound_persisted()
    t.inbound_persisted()  # later batches are not wakes
    assert [(d.trigger, d.ended_by) for d in done] == [("due job", W.REPLAYED)]
    assert done[0].latency_s == pytest.approx(0.005)


async def test_wake_replay_window_closed_superseded_and_no_relay() -> None:
    clock, t, done = _tracker()
    t.started("poke", relay=True)
    t.relay_changed(connected=True, replaying=True)
    t.relay_changed(connected=True, replaying=False)  # the window closed, nothing arrived
    t.started("poke", relay=True)
    t.started("resume", relay=True)  # the first never completed
    t.started("poke", relay=False)
    assert [d.ended_by for d in done] == [W.WINDOW_CLOSED, W.SUPERSEDED, W.SUPERSEDED, W.NO_RELAY]
    assert done[1].latency_s is None
    assert done[3].latency_s == 0.0


async def test_a_failed_history_write_is_one_warning_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = await open_state_db(tmp_path / "state.db")
    store = HistoryStore(db)
    store.start()
    try:
        await db.execute("DROP TABLE wake_history")
        store.transition("watcher", "live", "draining", "idle", 1.0)
        store.wake(2.0, "poke", 1.5, W.CONNECTED)
        with caplog.at_level(logging.WARNING, logger="gateway.ops"):
            await store.flush()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "2 row(s) dropped" in warnings[0].getMessage()
        assert store.dropped == 2
        store.transition("watcher", "draining", "dormant", "ack", 3.0)  # the writer still works
        await store.flush()
        rows = await read_all(db, "SELECT from_state, to_state FROM state_history")
        assert rows == [("draining", "dormant")]
    finally:
        await store.aclose()
        await db.close()


async def test_queue_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = await open_state_db(tmp_path / "state.db")
    store = HistoryStore(db, max_queue=3)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.ops"):
            for i in range(10):
                store.transition("relay", "a", "b", "", float(i))
        assert store.dropped == 7
        assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1
        assert await store.flush() == 3
    finally:
        await db.close()


async def test_retention_prunes_at_start(tmp_path: Path) -> None:
    """``gateway.history_retention_days`` (default 14) is applied when the sidecar starts."""
    (tmp_path / "config.yaml").write_text("gateway: {history_retention_days: 2}\n")
    clock = FakeClock()
    now = clock.wall()
    db = await open_state_db(tmp_path / "state.db")
    for ago_days in (3.0, 1.0):
        await db.execute(
            "INSERT INTO state_history (at, kind, from_state, to_state) VALUES (?, 'watcher', 'a', 'b')",
            (now - ago_days * 86400,),
        )
        await db.execute(
            "INSERT INTO wake_history (at, trigger, ended_by) VALUES (?, 'poke', 'live')",
            (now - ago_days * 86400,),
        )
    await db.close()
    config = load_config(tmp_path, {})
    assert config.ops_history_retention_days == 2.0
    assert load_config(tmp_path / "other", {}).ops_history_retention_days == 14.0
    sc = Sidecar(config, port=0, clock=clock, env={})
    await sc.start()
    try:
        for _ in range(200):
            rows = await read_all(sc.db, "SELECT COUNT(*) FROM wake_history")
            if rows[0][0] == 1:
                break
            await asyncio.sleep(0.01)
        assert rows[0][0] == 1
        await sc.ops.history.flush()
        rows = await read_all(sc.db, "SELECT at FROM state_history WHERE from_state = 'a'")
        assert rows == [(now - 86400,)]
    finally:
        await sc.shutdown()


@pytest.fixture
async def fake() -> AsyncIterator[FakeConnector]:
    async with FakeConnector() as f:
        yield f


async def test_a_real_sleep_and_wake_is_recorded(tmp_path: Path, fake: FakeConnector) -> None:
    """Idle -> draining -> dormant -> poke -> live, with one buffered message replayed: every
    watcher transition, the relay's handshakes and the wake (poke, ended by the first replayed
    inbound) land in state.db, and /metrics counts them."""
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
    sc = Sidecar(config, port=0, clock=clock, env={}, metrics_port=0)
    await sc.start()
    try:
        t = sc.transport
        assert t is not None
        await asyncio.wait_for(t.wait_until(lambda: t.connected), 10)
        await clock.advance(60)
        await asyncio.wait_for(t.wait_until(lambda: t.state is ConnState.DORMANT), 10)
        assert sc.watcher.state is WatchState.DORMANT
        fake.descriptor_overrides = {"buffered": 1}
        sc.watcher.wake("poke")
        await asyncio.wait_for(t.wait_until(lambda: t.connected), 10)
        await fake.send(F.inbound({"text": "hello", "chat_id": "c", "message_id": "m1"}, "b1"))
        await fake.wait_until(lambda: len(fake.of_type("inbound_ack")) == 1)
        await sc.ops.history.flush()
        rows = await read_all(sc.db, "SELECT kind, from_state, to_state FROM state_history ORDER BY id")
        watcher = [(a, b) for k, a, b in rows if k == "watcher"]
        assert watcher == [
            ("stopped", "live"),
            ("live", "draining"),
            ("draining", "dormant"),
            ("dormant", "live"),
        ]
        assert [b for k, _, b in rows if k == "relay"] == ["connected", "connected"]
        wakes = await read_all(sc.db, "SELECT trigger, latency_ms, ended_by FROM wake_history")
        assert wakes == [("poke", 0.0, W.REPLAYED)]  # a FakeClock: no time passes
        doc = await sc.overview()
        assert [w["trigger"] for w in doc["wakes"]] == ["poke"]
        text = sc.metrics.registry.get_sample_value(
            "hermes_transitions_total", {"from": "dormant", "to": "live"}
        )
        assert text == 1.0
        assert sc.metrics.registry.get_sample_value("hermes_wake_latency_seconds_count") == 1.0
    finally:
        await sc.shutdown()


async def test_cron_lateness_is_observed_when_a_run_starts(tmp_path: Path) -> None:
    """``cron run`` through the sidecar: the run starts (then fails: no provider) and its
    lateness is observed once."""
    from gateway.cron.store import Job

    clock = FakeClock()
    sc = Sidecar(load_config(tmp_path, {}), port=0, clock=clock, env={})
    await sc.start()
    try:
        now = clock.wall()
        await sc.cron_store.add(Job(id="j1", prompt="p", schedule="every 1d", tz="UTC", created_at=now))
        row = await sc.run_job_now("j1")
        assert row is not None
        assert row["status"] == "failed"
        assert sc.metrics.registry.get_sample_value("hermes_cron_lateness_seconds_count") == 1.0
    finally:
        await sc.shutdown()
