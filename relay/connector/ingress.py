"""Validation of what reaches the connector from outside: ingress bodies and outbound actions.

Pure functions; ``IngressError`` carries the HTTP status (400/404/413) and a message naming the
bad or missing field.
"""

from __future__ import annotations

from typing import Any

from relay.errors import SidecarError
from relay.protocol import frames as F


class IngressError(SidecarError):
    """An ingress request is refused: ``status`` (400/404/413) and a message naming why."""

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
    need = {"send": ("chat_id", "content"), "edit": ("chat_id", "message_id", "content"),
            "typing": ("chat_id",)}[op]
    missing = [k for k in need if action.get(k) in (None, "")]
    if missing:
        return f"op {op!r} lacks {', '.join(missing)}"
    if op != "typing" and not isinstance(action.get("content"), str):
        return f"op {op!r} content must be a string"
    return None


def id_field(body: dict[str, Any], key: str, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise IngressError(400, f"field {key!r} is missing; expected a string or number")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise IngressError(400, f"field {key!r} must be a string or number, not "
                                f"{type(value).__name__}")
    text = str(value)
    if required and not text.strip():
        raise IngressError(400, f"field {key!r} is empty")
    return text


def build_event(platform: str, body: Any) -> dict[str, Any]:
    """Validate an ingress body and build the ``inbound.event`` (PROTOCOL.md section 4).

    Raises ``IngressError(400)`` naming the bad or missing field, or saying the body is not a
    JSON object. Extra fields are ignored; ids are kept as strings.
    """
    if not isinstance(body, dict):
        raise IngressError(400, "body is not a JSON object")
    chat_id = id_field(body, "chat_id", True)
    user_id = id_field(body, "user_id", True)
    message_id = id_field(body, "message_id", True)
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise IngressError(400, "field 'text' must be a non-empty string")
    source: dict[str, Any] = {
        "platform": platform,
        "chat_id": chat_id,
        "chat_type": "dm",
        "user_id": user_id,
        "user_name": None,
    }
    for key in ("user_name", "chat_type", "profile"):
        if key in body and body[key] is not None:
            if not isinstance(body[key], str):
                raise IngressError(400, f"field {key!r} must be a string")
            source[key] = body[key]
    return {"text": text, "message_type": "text", "message_id": message_id, "source": source}
