"""Egress checks and the chat book behind the ``follow_up`` and ``get_chat_info`` ops
(contract 4): which identity an outbound may go out under, and what the connector knows of
each chat from the inbound it carried.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from relay.connector import telegram as tg

if TYPE_CHECKING:
    from relay.connector.surface import Chats, ConnectorSurface, Session

log = logging.getLogger("relay.connector")

CHATS_KEPT = 10_000
"""Chats remembered for ``follow_up``/``get_chat_info`` (least recently seen dropped first)."""


def egress_identity(
    s: Session, routes: dict[tuple[str, str], str], platform: str | None, bot_id: str | None
) -> tuple[str, str] | str:
    """The ``(platform, botId)`` an outbound goes out under, or the ``egress declined: ...``
    error when the gateway never announced it (hello, provision or a configured Telegram bot:
    anything routed to it). No platform -> the socket's default identity; a platform
    without ``botId`` -> the gateway's announced identity on that platform."""
    gid = s.gateway_id
    if platform is None:
        return s.identity
    mine = [i for i in s.identities if routes.get(i) == gid]
    mine += [i for i, g in routes.items() if g == gid and i not in mine]
    if bot_id is None:
        found = next((i for i in mine if i[0] == platform), None)
        if found is not None:
            return found
        return f"egress declined: gateway {gid!r} never announced platform {platform!r}"
    if (platform, bot_id) in mine:
        return platform, bot_id
    return f"egress declined: gateway {gid!r} never announced identity {platform}/{bot_id!r}"


def follow_up_chat(chats: Chats, gid: str, platform: str, session_key: Any) -> str | None:
    """The chat a ``follow_up`` without ``chat_id`` goes to: the most recent chat of this
    gateway and platform whose id is one ``:``-separated part of ``session_key``."""
    if not isinstance(session_key, str):
        return None
    parts = set(session_key.split(":"))
    for g, p, chat_id in reversed(chats):
        if g == gid and p == platform and chat_id in parts:
            return chat_id
    return None


def note_chat(chats: Chats, gid: str, platform: str, source: dict[str, Any]) -> None:
    """Remember what an inbound's ``source`` says of its chat (name, type), most recent
    last; at most ``CHATS_KEPT`` chats are kept (the oldest go first)."""
    slot = (gid, platform, str(source["chat_id"]))
    chats.pop(slot, None)
    chats[slot] = {"name": source.get("chat_name"), "type": source.get("chat_type")}
    while len(chats) > CHATS_KEPT:
        chats.popitem(last=False)


async def chat_info(
    c: ConnectorSurface, gid: str, platform: str, bot_id: str, chat_id: str
) -> dict[str, Any] | None:
    """``get_chat_info`` (contract 4): Telegram's ``getChat`` for a configured bot, else what
    the last inbound of that chat said (``chat_name``/``chat_type``): ``{name, type}``, or None
    when nothing is known of the chat."""
    info: dict[str, Any] | None = None
    if c.platform_outbox.handles(platform, bot_id):
        token = c.platform_outbox.tokens[bot_id]
        out = await tg.call(
            c.http,
            c.platform_outbox.api_base,
            token,
            "getChat",
            {"chat_id": tg._maybe_int(chat_id)},
        )
        if out.kind == "ok":
            info = tg.chat_info_of(out.result)
        else:
            log.info(
                "gateway %s: getChat %s failed (%s); using the last inbound",
                gid,
                chat_id,
                out.error,
            )
    if info is None:
        known = c.chats.get((gid, platform, chat_id))
        if known is not None:
            info = {"name": known["name"] or chat_id, "type": known["type"] or "dm"}
    return info
