"""Validation of what reaches the connector from outside: ingress bodies and outbound actions.

Pure functions; ``IngressError`` carries the HTTP status (400/404/413) and a message naming the
bad or missing field. Bad input is always a 4xx, never an exception of another kind (SPEC 8.3):
deep nesting, lone surrogates and non-finite numbers are refused by name.
"""

from __future__ import annotations

import json
import math
from typing import Any

from common.errors import SidecarError
from relay.protocol import frames as F

MESSAGE_TYPES = ("text", "photo", "voice", "document", "sticker", "other")
"""Allowed ``message_type`` values (SPEC 2, 8.3); ``text`` needs a non-empty ``text``."""
MAX_DEPTH = 64
"""Deepest nesting (objects/arrays) an ingress body may have."""
SOURCE_STRINGS = ("user_name", "chat_type", "profile")
"""Optional string fields copied into ``event.source`` (a non-string is a 400)."""
SOURCE_EXTRAS = (
    "scope_id",
    "guild_id",
    "parent_chat_id",
    "chat_name",
    "chat_topic",
    "user_id_alt",
    "chat_id_alt",
    "user_display_name",
    "user_handle",
    "prospective_thread_id",
    "auto_thread_initial_name",
)
"""Optional ``SessionSource`` fields of the hermes-agent relay-connector contract (section 3,
"SessionSource fields"): kept (as strings) when they are strings or numbers, ignored otherwise."""
SOURCE_ALWAYS = ("thread_id", "chat_name", "chat_topic")
"""Contract section 3: ``thread_id``, ``chat_name`` and ``chat_topic`` are always present on
``event.source`` (null when unknown), like ``user_name``."""
SOURCE_RESERVED = ("platform", "chat_id", "user_id")
"""Source keys an ingress body's ``source`` object cannot override (they come from the path and
the top-level fields)."""


class IngressError(SidecarError):
    """An ingress request is refused: ``status`` (400/404/413; 503 when the store fails) and a
    message naming why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_action(action: Any) -> str | None:
    """None if ``action`` is a supported op with its fields, else the error for the result."""
    if not isinstance(action, dict):
        return "unsupported op: action is not an object"
    op = action.get("op")
    if op not in F.SUPPORTED_OPS:
        return f"unsupported op {op!r}; supported: {', '.join(F.SUPPORTED_OPS)}"
    need = {
        "send": ("chat_id", "content"),
        "edit": ("chat_id", "message_id", "content"),
        "typing": ("chat_id",),
        # follow_up names its chat by ``chat_id`` or by ``session_key`` (resolved by the server)
        "follow_up": ("content",),
        "send_media": ("chat_id", "media_kind", "source_url"),
        "get_chat_info": ("chat_id",),
    }[op]
    missing = [k for k in need if action.get(k) in (None, "")]
    if missing:
        return f"op {op!r} lacks {', '.join(missing)}"
    if op in ("send", "edit", "follow_up") and not isinstance(action.get("content"), str):
        return f"op {op!r} content must be a string"
    if op == "follow_up" and action.get("chat_id") in (None, "") and not action.get("session_key"):
        return "op 'follow_up' lacks chat_id or session_key"
    if op == "send_media":
        if action.get("media_kind") not in F.MEDIA_KINDS:
            return f"op 'send_media' media_kind must be one of {', '.join(F.MEDIA_KINDS)}"
        url = action.get("source_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return "op 'send_media' source_url must be an http(s) URL"
        if action.get("content") is not None and not isinstance(action.get("content"), str):
            return "op 'send_media' content (the caption) must be a string"
    return None


def check_idempotency_key(frame: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(key, error)`` of an outbound's ``idempotencyKey`` (PROTOCOL.md 7.1).

    Absent or null -> ``(None, None)``; a string of 1-128 characters -> ``(key, None)``;
    anything else -> ``(None, error)`` for a ``success: false`` result.
    """
    key = frame.get("idempotencyKey")
    if key is None:
        return None, None
    if not isinstance(key, str) or not 1 <= len(key) <= F.IDEMPOTENCY_KEY_MAX:
        return None, f"idempotencyKey must be a string of 1-{F.IDEMPOTENCY_KEY_MAX} characters"
    return key, None


def parse_body(raw: bytes) -> Any:
    """Decode an ingress body as JSON. Raises ``IngressError(400)`` when it is not UTF-8 JSON
    or nests deeper than ``MAX_DEPTH``. Non-finite numbers parse (as floats); the fields that
    are kept are checked by ``build_event``."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise IngressError(400, f"body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # includes UnicodeDecodeError
        raise IngressError(400, f"body is not a JSON object: {_short(exc)}") from None
    _check_depth(body)
    return body


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_depth(body: Any) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` (iterative: no recursion on hostile input)."""
    if not isinstance(body, dict | list):
        return
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        value, depth, top = stack.pop()
        if depth > MAX_DEPTH:
            where = f"field {top!r}" if top else "body"
            raise IngressError(400, f"{where} nests deeper than {MAX_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if isinstance(v, dict | list):
                stack.append((v, depth + 1, top or str(k)))


def id_field(body: dict[str, Any], key: str, required: bool) -> str | None:
    """A string-or-number field as a string (None when absent and not ``required``).

    Raises ``IngressError(400)`` naming ``key`` when it is missing (and required), empty (and
    required), not a string or number, or a non-finite number (NaN, Infinity, 1e400).
    """
    value = body.get(key)
    if value is None:
        if required:
            raise IngressError(400, f"field {key!r} is missing; expected a string or number")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise IngressError(400, f"field {key!r} must be a string or number, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise IngressError(400, f"field {key!r} must be a finite number, not {value}")
    text = str(value)
    if required and not text.strip():
        raise IngressError(400, f"field {key!r} is empty")
    return text


def check_unicode(field: str, value: str) -> None:
    """Raise ``IngressError(400)`` naming ``field`` if ``value`` cannot be encoded as UTF-8
    (a lone surrogate such as a JSON ``"\\ud800"`` escape)."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise IngressError(400, f"field {field!r} is not valid Unicode (lone surrogate)") from None


def build_event(platform: str, body: Any) -> dict[str, Any]:
    """Validate an ingress body and build the ``inbound.event`` (PROTOCOL.md section 4).

    Shape: ``{text, message_type, message_id, caption?, source: {platform, chat_id, chat_type,
    user_id, user_name, thread_id?, profile?, scope_id?, ...}}``. ``message_type`` defaults to
    ``text`` (which needs a non-empty ``text``); other types may carry a ``caption`` instead.
    Raises ``IngressError(400)`` naming the bad or missing field, or saying the body is not a
    JSON object. Extra fields are ignored; ids are kept as strings.
    """
    if not isinstance(body, dict):
        raise IngressError(400, "body is not a JSON object")
    chat_id = id_field(body, "chat_id", True)
    user_id = id_field(body, "user_id", True)
    message_id = id_field(body, "message_id", True)
    message_type = body.get("message_type")
    if message_type is None:
        message_type = "text"
    if not isinstance(message_type, str) or message_type not in MESSAGE_TYPES:
        raise IngressError(400, f"field 'message_type' must be one of {', '.join(MESSAGE_TYPES)}")
    text = body.get("text")
    if message_type == "text":
        if not isinstance(text, str) or not text:
            raise IngressError(400, "field 'text' must be a non-empty string")
    elif text is None:
        text = ""
    elif not isinstance(text, str):
        raise IngressError(400, "field 'text' must be a string")
    source: dict[str, Any] = {
        "platform": platform,
        "chat_id": chat_id,
        "chat_type": "dm",
        "user_id": user_id,
        "user_name": None,
    }
    extra = body.get("source")
    if extra is not None and not isinstance(extra, dict):
        raise IngressError(400, "field 'source' must be an object")
    for key in SOURCE_STRINGS:
        if body.get(key) is not None:
            if not isinstance(body[key], str):
                raise IngressError(400, f"field {key!r} must be a string")
            source[key] = body[key]
    for key in SOURCE_ALWAYS:
        source.setdefault(key, None)
    thread_id = id_field(body, "thread_id", False)
    if thread_id:
        source["thread_id"] = thread_id
    for key in SOURCE_EXTRAS:
        value = body.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            source[key] = id_field(body, key, False)
    if body.get("auto_thread_created") is True:
        source["auto_thread_created"] = True
    # Any other source field (a contract field this connector does not name, or a newer one)
    # rides under its own name in an optional ``source`` object; the identity keys do not.
    for key, value in (extra or {}).items():
        if key in SOURCE_RESERVED:
            raise IngressError(400, f"field 'source.{key}' cannot be set; use the top-level field")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise IngressError(400, f"field 'source.{key}' must be a string, number, boolean or null")
        if isinstance(value, float) and not math.isfinite(value):
            raise IngressError(400, f"field 'source.{key}' must be a finite number")
        if isinstance(key, str):
            check_unicode(f"source.{key}", key)
        source[key] = value
    event: dict[str, Any] = {"text": text, "message_type": message_type, "message_id": message_id}
    reply_to = id_field(body, "reply_to_message_id", False)
    if reply_to:
        event["reply_to_message_id"] = reply_to
    caption = body.get("caption")
    if caption is not None:
        if not isinstance(caption, str):
            raise IngressError(400, "field 'caption' must be a string")
        event["caption"] = caption
    event["source"] = source
    for key, value in [*event.items(), *source.items()]:
        if isinstance(value, str):
            check_unicode("platform (URL path)" if key == "platform" else key, value)
    return event
