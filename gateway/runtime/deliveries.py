"""Deliveries of cron results and alerts to a chat: sent at once when the relay is connected,
otherwise kept in state.db (``deliveries``) and sent, in order, as soon as it is connected again.

A send whose result is ambiguous (timeout, lost connection) counts as sent: an answer twice is
worse than one lost (README "Choices"). Flushing counts as ``delivery`` work for the watcher.
"""

from __future__ import annotations

import asyncio
import logging

from common.clock import Clock
from gateway.agent.provider import split_message
from gateway.core.activity import Activity
from gateway.cron.deliveries_store import DeliveryStore
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport
from relay.protocol.frames import NOT_CONNECTED

log = logging.getLogger("gateway.sidecar")


class Deliveries:
    """``deliver(platform, chat_id, text)`` plus the flush after a reconnect. Register
    ``on_transport_change`` as a transport listener.

    ``store``: the queue of deliveries in state.db."""

    def __init__(
        self,
        store: DeliveryStore,
        transport: RelayTransport | None,
        clock: Clock,
        activity: Activity,
    ) -> None:
        self.store = store
        self.transport = transport
        self.clock = clock
        self.activity = activity
        self.flushing: asyncio.Task[None] | None = None
        self._pending = True  # unknown at start: look once

    async def deliver(self, platform: str, chat_id: str, text: str) -> None:
        """Send ``text`` to a chat now, or keep it in state.db and send it after the next wake."""
        if await self._send_text(platform, chat_id, text):
            return
        await self.store.queue(platform, chat_id, text, self.clock.wall())
        self._pending = True
        log.info("delivery to %s:%s queued until the relay is connected", platform, chat_id)

    async def _send_text(self, platform: str, chat_id: str, text: str) -> bool:
        t = self.transport
        if t is None or not t.connected:
            return False
        for chunk in split_message(text, t.max_message_length):
            result = await t.send_outbound(
                {"op": "send", "chat_id": chat_id, "content": chunk}, platform=platform
            )
            if not result.get("success"):
                if result.get("ambiguous"):
                    return True  # ambiguous: never sent twice
                if result.get("error") == NOT_CONNECTED["error"]:
                    return False  # keep it queued for the reconnect
                # A definite failure (a decline, an unsupported op): sending it again cannot
                # help, and keeping it would hold back every delivery queued behind it.
                log.warning(
                    "delivery to %s:%s failed for good and is dropped: %s",
                    platform,
                    chat_id,
                    result.get("error"),
                )
                return True
        return True

    def on_transport_change(self) -> None:
        """Start a flush when the relay is connected and something may be queued."""
        t = self.transport
        if t is None or t.state is not ConnState.CONNECTED or not self._pending:
            return
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        pending = await self.store.pending()
        self._pending = False
        if not pending:
            return
        with self.activity.work("delivery"):
            for delivery_id, platform, chat_id, text in pending:
                if not await self._send_text(platform, chat_id, text):
                    self._pending = True
                    return
                await self.store.mark_delivered(delivery_id, self.clock.wall())
            log.info("sent %d queued deliver(ies) after the relay came back", len(pending))
