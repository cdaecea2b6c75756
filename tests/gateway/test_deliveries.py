"""Cron results and alerts (deliveries): a definite failure never blocks the queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from common.clock import FakeClock
from gateway.core.activity import Activity
from gateway.cron.deliveries_store import DeliveryStore
from gateway.runtime.deliveries import Deliveries
from gateway.statedb import open_state_db
from relay.client.transport import RelayTransport


class _Transport:
    """Connected; answers every send with ``result``."""

    connected = True
    max_message_length = 4096

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        self.sends = 0

    async def send_outbound(self, *_a: Any, **_k: Any) -> dict[str, Any]:
        self.sends += 1
        return self.result


async def _pending_after(tmp_path: Path, result: dict[str, Any]) -> tuple[int, int]:
    db = await open_state_db(tmp_path / "state.db")
    try:
        store = DeliveryStore(db)
        clock = FakeClock()
        t = _Transport(result)
        deliveries = Deliveries(store, cast(RelayTransport, t), clock, Activity(clock))
        await deliveries.deliver("relay", "c1", "the digest")
        return len(await store.pending()), t.sends
    finally:
        await db.close()


async def test_a_declined_delivery_is_dropped_not_queued(tmp_path: Path) -> None:
    """egress declined: one attempt, nothing left queued to block the next deliveries."""
    declined = {"success": False, "code": "egress_declined", "error": "egress declined: no"}
    assert await _pending_after(tmp_path, declined) == (0, 1)


async def test_a_delivery_while_not_connected_stays_queued(tmp_path: Path) -> None:
    """'not connected' keeps it in state.db for the reconnect."""
    lost = {"success": False, "error": "relay transport not connected"}
    assert await _pending_after(tmp_path, lost) == (1, 1)
