"""Telegram for the reference connector (SPEC 8.3): bot configuration, webhook updates as
ingress bodies, and one Bot API call with its outcome classified for the durable send queue.

Plain aiohttp (no aiogram): the queue needs the raw HTTP status, ``description`` and
``parameters.retry_after`` of every answer, and no model validation of Telegram's replies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.connector.ingress import IngressError

DEFAULT_API_BASE = "https://api.telegram.org"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
PLATFORM = "telegram"
CALL_TIMEOUT_S = 30.0

_MEDIA_TYPES = ("photo", "voice", "document", "sticker")
_CHAT_TYPES = {"private": "dm", "group": "group", "supergroup": "group", "channel": "channel"}


def bot_id_of(token: str) -> str:
    """The bot id of a Bot API token: its part before ``:`` (``123456:ABC...`` -> ``123456``)."""
    return token.partition(":")[0]


@dataclass(frozen=True)
class Outcome:
    """One Bot API call: ``kind`` is ``ok`` (``result`` holds Telegram's ``result``), ``retry``
    (network error or 5xx: back off), ``wait`` (429: retry after ``retry_after`` s) or ``fail``
    (any other answer: ``error`` is Telegram's description)."""

    kind: str
    result: Any = None
    error: str = ""
    retry_after: float = 0.0


async def call(
    http: aiohttp.ClientSession, base: str, token: str, method: str, payload: dict[str, Any]
) -> Outcome:
    """``POST <base>/bot<token>/<method>`` with a JSON ``payload``; never raises for a network
    error or an odd answer (they become an ``Outcome``)."""
    url = f"{base.rstrip('/')}/bot{token}/{method}"
    try:
        async with http.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)) as resp:
            status = resp.status
            raw = await resp.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Outcome("retry", error=f"network error: {type(exc).__name__}: {exc}")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    description = body.get("description")
    desc = description if isinstance(description, str) and description else f"HTTP {status}"
    if status == 200 and body.get("ok") is True:
        return Outcome("ok", result=body.get("result"))
    if status == 429:
        params = body.get("parameters")
        after = params.get("retry_after") if isinstance(params, dict) else None
        wait = float(after) if isinstance(after, int | float) and not isinstance(after, bool) else 1.0
        return Outcome("wait", error=desc, retry_after=max(0.0, min(wait, 3600.0)))
    if status >= 500:
        return Outcome("retry", error=desc)
    return Outcome("fail", error=desc)


def _maybe_int(value: Any) -> Any:
    """A numeric string as an int (Telegram ids), anything else unchanged."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


MEDIA_METHODS = {
    "image": ("sendPhoto", "photo"),
    "voice": ("sendVoice", "voice"),
    "audio": ("sendAudio", "audio"),
    "video": ("sendVideo", "video"),
    "document": ("sendDocument", "document"),
}
"""``send_media.media_kind`` -> (Bot API method, its file field); Telegram fetches the URL."""


def api_call_for(action: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The Bot API method and payload of a checked outbound ``action``: send and follow_up ->
    ``sendMessage``, edit, typing, send_media -> ``sendPhoto``/``sendDocument``/... by
    ``media_kind`` (caption = ``content``)."""
    op = action["op"]
    chat_id = _maybe_int(action["chat_id"])
    if op == "send_media":
        method, file_field = MEDIA_METHODS[action["media_kind"]]
        media: dict[str, Any] = {"chat_id": chat_id, file_field: action["source_url"]}
        if action.get("content"):
            media["caption"] = action["content"]
        if action.get("reply_to") not in (None, ""):
            media["reply_to_message_id"] = _maybe_int(action["reply_to"])
        if action.get("thread_id") not in (None, ""):
            media["message_thread_id"] = _maybe_int(action["thread_id"])
        return method, media
    if op == "typing":
        payload: dict[str, Any] = {"chat_id": chat_id, "action": "typing"}
        if action.get("thread_id") not in (None, ""):
            payload["message_thread_id"] = _maybe_int(action["thread_id"])
        return "sendChatAction", payload
    if op == "edit":
        return "editMessageText", {
            "chat_id": chat_id,
            "message_id": _maybe_int(action["message_id"]),
            "text": action["content"],
        }
    payload = {"chat_id": chat_id, "text": action["content"]}
    if action.get("reply_to") not in (None, ""):
        payload["reply_to_message_id"] = _maybe_int(action["reply_to"])
    if action.get("thread_id") not in (None, ""):
        payload["message_thread_id"] = _maybe_int(action["thread_id"])
    return "sendMessage", payload


def result_of(action: dict[str, Any], api_result: Any) -> dict[str, Any]:
    """The ``outbound_result`` of a confirmed call: ``message_id`` is Telegram's (as a string)."""
    out: dict[str, Any] = {"success": True}
    if action["op"] == "typing":
        return out
    mid = api_result.get("message_id") if isinstance(api_result, dict) else None
    if mid is None and action["op"] == "edit":
        mid = action.get("message_id")
    if mid is not None:
        out["message_id"] = str(mid)
    return out


UPDATE_ID_MIN, UPDATE_ID_MAX = -(2**63), 2**63 - 1
"""The store keys updates by ``update_id`` in an SQLite INTEGER (64-bit signed): a larger one
is a bad body (400), not a store failure (503)."""


def ingress_body(update: Any) -> tuple[int, dict[str, Any] | None]:
    """``(update_id, ingress body)`` of a webhook Update; the body is None for an update that is
    not a ``message`` (ignored). Raises ``IngressError(400)`` naming the bad field (an
    ``update_id`` that is not an integer of 64 bits included)."""
    if not isinstance(update, dict):
        raise IngressError(400, "body is not a JSON object")
    update_id = update.get("update_id")
    if (
        isinstance(update_id, bool)
        or not isinstance(update_id, int)
        or not UPDATE_ID_MIN <= update_id <= UPDATE_ID_MAX
    ):
        raise IngressError(
            400, f"field 'update_id' must be an integer from {UPDATE_ID_MIN} to {UPDATE_ID_MAX}"
        )
    message = update.get("message")
    if message is None:
        return update_id, None
    if not isinstance(message, dict):
        raise IngressError(400, "field 'message' must be an object")
    chat = message.get("chat")
    if not isinstance(chat, dict):
        raise IngressError(400, "field 'message.chat' must be an object")
    sender = message.get("from")
    if sender is not None and not isinstance(sender, dict):
        raise IngressError(400, "field 'message.from' must be an object")
    sender = sender or {}
    body: dict[str, Any] = {
        "chat_id": chat.get("id"),
        # A channel post has no sender: the chat speaks for itself.
        "user_id": sender.get("id", chat.get("id")),
        "message_id": message.get("message_id"),
    }
    name = sender.get("username") or sender.get("first_name")
    if isinstance(name, str) and name:
        body["user_name"] = name
    chat_type = chat.get("type")
    if isinstance(chat_type, str):
        body["chat_type"] = _CHAT_TYPES.get(chat_type, chat_type)
    if chat.get("is_forum") is True:
        body["chat_type"] = "forum"  # contract section 3: Telegram chat_type dm/group/forum
    chat_name = chat_name_of(chat)
    if chat_name:
        body["chat_name"] = chat_name
    if message.get("message_thread_id") is not None:
        body["thread_id"] = message["message_thread_id"]
    reply = message.get("reply_to_message")
    if isinstance(reply, dict) and reply.get("message_id") is not None:
        body["reply_to_message_id"] = reply["message_id"]
    topic = reply.get("forum_topic_created") if isinstance(reply, dict) else None
    if isinstance(topic, dict) and isinstance(topic.get("name"), str):
        body["chat_topic"] = topic["name"]
    text = message.get("text")
    if isinstance(text, str) and text:
        body["message_type"] = "text"
        body["text"] = text
    else:
        body["message_type"] = next((t for t in _MEDIA_TYPES if message.get(t) is not None), "other")
        caption = message.get("caption")
        if caption is not None:
            body["caption"] = caption
    return update_id, body


def chat_name_of(chat: dict[str, Any]) -> str | None:
    """A Telegram chat's display name: its title, else the private chat's first + last name,
    else its @username."""
    title = chat.get("title")
    if isinstance(title, str) and title:
        return title
    parts = [chat.get(k) for k in ("first_name", "last_name")]
    name = " ".join(p for p in parts if isinstance(p, str) and p)
    if name:
        return name
    username = chat.get("username")
    return username if isinstance(username, str) and username else None


def chat_info_of(chat: Any) -> dict[str, Any] | None:
    """``{name, type}`` of a ``getChat`` result (contract section 4 ``get_chat_info``)."""
    if not isinstance(chat, dict):
        return None
    raw_type = chat.get("type")
    kind = _CHAT_TYPES.get(raw_type, raw_type) if isinstance(raw_type, str) else "dm"
    if chat.get("is_forum") is True:
        kind = "forum"
    return {"name": chat_name_of(chat) or str(chat.get("id", "")), "type": kind}


async def set_webhook(
    http: aiohttp.ClientSession, base: str, token: str, url: str, secret: str
) -> tuple[bool, str]:
    """Register ``url`` as the bot's webhook with ``secret`` and ``allowed_updates: [message]``.

    Returns ``(ok, Telegram's description or the error)``.
    """
    out = await call(
        http,
        base,
        token,
        "setWebhook",
        {"url": url, "secret_token": secret, "allowed_updates": ["message"]},
    )
    if out.kind == "ok":
        return True, "webhook set"
    return False, out.error
