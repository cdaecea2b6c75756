"""Outbound frames from a gateway: egress check, the ops, and the outbox record with its
``outbound_result``. Owns idempotent sends (PROTOCOL.md 7.1: one ``idempotencyKey`` makes one
outbox row) and the hand-off of platform sends to ``PlatformOutbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

from relay.connector.egress import chat_info, egress_identity, follow_up_chat
from relay.connector.ingress import check_action, check_idempotency_key
from relay.connector.store import PlatformSend
from relay.protocol import frames as F
from relay.protocol.framing import encode_frame

if TYPE_CHECKING:
    from relay.connector.surface import ConnectorSurface, Session

log = logging.getLogger("relay.connector")


class OutboundHandler:
    """``outbound`` frames of a ``Connector``'s sessions, answered on the socket they came on
    (or, for a platform send, on the gateway's socket when the platform confirms)."""

    def __init__(self, connector: ConnectorSurface) -> None:
        self.c = connector
        # (gateway id, idempotencyKey) -> the stored result once committed (None: not recorded).
        self._inflight: dict[tuple[str, str], asyncio.Future[dict[str, Any] | None]] = {}

    async def on_outbound(self, s: Session, frame: dict[str, Any]) -> None:
        """Record an outbound in the outbox and answer it once committed.

        Without a key the outbox row is queued before this returns (send order = frame order);
        with an ``idempotencyKey`` the key is looked up first (one read), see ``_outbound_keyed``.
        """
        rid = frame.get("requestId")
        if not isinstance(rid, str):
            log.warning("gateway %s: outbound without a string requestId dropped", s.gateway_id)
            return
        key, error = check_idempotency_key(frame)
        action = frame.get("action")
        error = error or check_action(action)
        if error is not None:
            self.c.spawn(self.reply(s, rid, {"success": False, "error": error}))
            return
        assert isinstance(action, dict)
        fp, fb = frame.get("platform"), frame.get("botId")
        identity = egress_identity(
            s, self.c.routes, fp if isinstance(fp, str) else None, fb if isinstance(fb, str) else None
        )
        if isinstance(identity, str):
            log.warning("gateway %s: %s", s.gateway_id, identity)
            self.c.spawn(self.reply(s, rid, {"success": False, "code": "egress_declined", "error": identity}))
            return
        platform, bot_id = identity
        op = action["op"]
        if op == "get_chat_info":
            self.c.spawn(self._chat_info(s, rid, platform, bot_id, str(action["chat_id"])))
            return
        if op == "follow_up" and action.get("chat_id") in (None, ""):
            chat = follow_up_chat(self.c.chats, s.gateway_id, platform, action.get("session_key"))
            if chat is None:
                error = f"follow_up: no chat known for session_key {action.get('session_key')!r}"
                self.c.spawn(self.reply(s, rid, {"success": False, "error": error}))
                return
            action = {**action, "chat_id": chat}
        if key is not None:
            await self._outbound_keyed(s, rid, key, platform, bot_id, action)
            return
        if self.c.platform_outbox.handles(platform, bot_id):
            # Listed in the outbox and queued for the platform in one transaction (send order =
            # frame order); the worker answers the gateway when the platform confirms.
            committed = self._record(s, platform, bot_id, action, platform_send=(uuid.uuid4().hex, rid))
            self.c.spawn(self._platform_queued(s, rid, bot_id, committed))
            return
        result = result_for(action)
        committed = self._record(s, platform, bot_id, action)
        self.c.spawn(self.reply(s, rid, result, committed))

    async def _outbound_keyed(
        self, s: Session, rid: str, key: str, platform: str, bot_id: str, action: dict[str, Any]
    ) -> None:
        """PROTOCOL.md 7.1: a key known for this gateway is answered with its stored result and
        ``duplicate: true`` and never recorded again; a new key is recorded with its outbox row
        in one transaction. A second outbound with the same key that arrives before the first
        commits waits for it (``_inflight``), so one key makes exactly one outbox row."""
        slot = (s.gateway_id, key)
        pending = self._inflight.get(slot)
        if pending is not None:
            self.c.spawn(self._answer_when_settled(s, rid, key, platform, bot_id, action, pending))
            return
        settled: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._inflight[slot] = settled
        try:
            stored = await self.c.store.idempotent_result(s.gateway_id, key)
        except Exception as exc:
            self._settle(slot, settled, None)
            log.error("gateway %s: idempotency lookup failed: %s", s.gateway_id, exc)
            self.c.spawn(self.reply(s, rid, {"success": False, "error": f"connector store failed: {exc}"}))
            return
        if stored is not None:
            self._settle(slot, settled, stored)
            log.info("gateway %s: duplicate outbound (idempotencyKey %r) not sent again", s.gateway_id, key)
            self.c.spawn(self.reply(s, rid, {**stored, "duplicate": True}))
            return
        if self.c.platform_outbox.handles(platform, bot_id):
            await self._platform_keyed(s, rid, key, slot, settled, platform, bot_id, action)
            return
        result = result_for(action)
        committed = self._record(s, platform, bot_id, action, idempotency_key=key, result=result)
        self.c.spawn(self._commit_keyed(s, rid, slot, settled, result, committed))

    async def _platform_queued(
        self, s: Session, rid: str, bot_id: str, committed: asyncio.Future[None]
    ) -> bool:
        """Wake the bot's worker once a platform send is committed; answer a store failure."""
        try:
            await committed
        except Exception as exc:
            await self.reply(s, rid, {"success": False, "error": f"connector store failed: {exc}"})
            return False
        self.c.platform_outbox.poke(bot_id)
        return True

    async def _platform_keyed(
        self,
        s: Session,
        rid: str,
        key: str,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        platform: str,
        bot_id: str,
        action: dict[str, Any],
    ) -> None:
        """A keyed platform send: the key is stored with the queued send; a resend of a key whose
        send is still queued (also across a restart) waits for that send's result."""
        try:
            queued = await self.c.store.platform_send_by_key(s.gateway_id, key)
        except Exception as exc:
            self._settle(slot, settled, None)
            self.c.spawn(self.reply(s, rid, {"success": False, "error": f"connector store failed: {exc}"}))
            return
        if queued is not None:
            log.info("gateway %s: idempotencyKey %r is already queued; not sent again", s.gateway_id, key)
            self.c.spawn(self._platform_duplicate(s, rid, slot, settled, queued))
            return
        send_id = uuid.uuid4().hex
        committed = self._record(
            s, platform, bot_id, action, idempotency_key=key, platform_send=(send_id, rid)
        )
        self.c.spawn(self._platform_keyed_settle(s, rid, bot_id, slot, settled, send_id, committed))

    async def _platform_keyed_settle(
        self,
        s: Session,
        rid: str,
        bot_id: str,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        send_id: str,
        committed: asyncio.Future[None],
    ) -> None:
        result: dict[str, Any] | None = None
        try:
            if await self._platform_queued(s, rid, bot_id, committed):
                result = await self.c.platform_outbox.wait_for(send_id)
        finally:
            self._settle(slot, settled, result)

    async def _platform_duplicate(
        self,
        s: Session,
        rid: str,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        queued: PlatformSend,
    ) -> None:
        result: dict[str, Any] | None = queued.result
        try:
            if result is None:
                result = await self.c.platform_outbox.wait_for(queued.send_id)
        finally:
            self._settle(slot, settled, result)
        await self.reply(s, rid, {**result, "duplicate": True})

    async def platform_done(self, send: PlatformSend, result: dict[str, Any]) -> None:
        """A platform send has its final result (committed): answer its ``requestId`` on the
        gateway's current socket, if it has one (a keyed resend gets it later otherwise)."""
        s = self.c.sessions.get(send.gateway_id)
        if send.request_id and s is not None:
            await self.reply(s, send.request_id, result)

    def _settle(
        self,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        stored: dict[str, Any] | None,
    ) -> None:
        if self._inflight.get(slot) is settled:
            del self._inflight[slot]
        if not settled.done():
            settled.set_result(stored)

    async def _commit_keyed(
        self,
        s: Session,
        rid: str,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        result: dict[str, Any],
        committed: asyncio.Future[None],
    ) -> None:
        stored: dict[str, Any] | None = None
        try:
            await committed
            stored = result
        except Exception as exc:
            result = {"success": False, "error": f"connector store failed: {exc}"}
        finally:
            self._settle(slot, settled, stored)  # also when cancelled: waiters never hang
        await self.reply(s, rid, result)

    async def _answer_when_settled(
        self,
        s: Session,
        rid: str,
        key: str,
        platform: str,
        bot_id: str,
        action: dict[str, Any],
        pending: asyncio.Future[dict[str, Any] | None],
    ) -> None:
        stored = await asyncio.shield(pending)
        if stored is None:  # the first one was never recorded: this one is a fresh attempt
            await self._outbound_keyed(s, rid, key, platform, bot_id, action)
            return
        await self.reply(s, rid, {**stored, "duplicate": True})

    def _record(
        self,
        s: Session,
        platform: str,
        bot_id: str,
        action: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        result: dict[str, Any] | None = None,
        platform_send: tuple[str, str | None] | None = None,
    ) -> asyncio.Future[None]:
        """Queue the gateway's outbound ``action`` for the outbox, stamped now (with its
        idempotency key and stored result, or its platform send ``(send id, requestId)``);
        the future settles when it committed (``ConnectorStore.record_outbound``)."""
        return self.c.store.record_outbound(
            gateway_id=s.gateway_id,
            platform=platform,
            bot_id=bot_id,
            action=action,
            now=self.c.clock.wall(),
            idempotency_key=idempotency_key,
            result=result,
            platform_send=platform_send,
        )

    async def reply(
        self, s: Session, rid: str, result: dict[str, Any], committed: asyncio.Future[None] | None = None
    ) -> None:
        """Send ``outbound_result`` for ``rid`` once ``committed`` (if given) resolves; a store
        failure is answered as ``{success: false, error}``. A closed socket gets nothing."""
        if committed is not None:
            try:
                await committed
            except Exception as exc:
                result = {"success": False, "error": f"connector store failed: {exc}"}
        if not s.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await s.ws.send_str(encode_frame(F.outbound_result(rid, result)))

    async def _chat_info(self, s: Session, rid: str, platform: str, bot_id: str, chat_id: str) -> None:
        """Answer ``get_chat_info`` (contract 4) with ``egress.chat_info``; unknown -> failure."""
        info = await chat_info(self.c, s.gateway_id, platform, bot_id, chat_id)
        if info is None:
            await self.reply(s, rid, {"success": False, "error": f"no chat info known for chat {chat_id!r}"})
            return
        await self.reply(s, rid, {"success": True, "chat_info": info, **info})


def result_for(action: dict[str, Any]) -> dict[str, Any]:
    """The ``outbound_result`` of a recorded action: an edit keeps its ``message_id``, a send
    gets a fresh one (16 hex chars), typing gets none."""
    result: dict[str, Any] = {"success": True}
    if action["op"] == "edit":
        result["message_id"] = str(action.get("message_id"))
    elif action["op"] != "typing":
        result["message_id"] = uuid.uuid4().hex[:16]
    return result
