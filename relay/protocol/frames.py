"""Frame shapes of PROTOCOL.md sections 3-4: constructors, the descriptor check, RFC 3339 times."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from common.errors import ProtocolError

# The wire format of ``wakeAt`` and ``at`` is the project's one RFC 3339 format (re-exported).
from common.timefmt import parse_rfc3339 as parse_rfc3339
from common.timefmt import rfc3339 as rfc3339

CONTRACT_VERSION = 1
DEFAULT_MAX_MESSAGE_LENGTH = 4096
DESCRIPTOR_REQUIRED = (
    "contract_version",
    "platform",
    "label",
    "max_message_length",
    "supports_draft_streaming",
    "supports_edit",
    "supports_threads",
    "markdown_dialect",
    "len_unit",
)
SUPPORTED_OPS = ("send", "edit", "typing", "follow_up", "send_media", "get_chat_info")
MEDIA_KINDS = ("image", "voice", "audio", "video", "document")
"""``send_media.media_kind`` values (hermes-agent relay-connector contract, section 4)."""

# Local outbound results (PROTOCOL.md section 4): never hang a caller.
NOT_CONNECTED = {"success": False, "error": "relay transport not connected"}
TIMED_OUT = {"success": False, "error": "relay outbound timed out", "ambiguous": True}
CONNECTION_LOST = {"success": False, "error": "relay transport connection lost", "ambiguous": True}


def new_request_id() -> str:
    """A fresh ``requestId``: 32 lowercase hex chars."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Descriptor:
    """A validated connector descriptor (PROTOCOL.md section 4)."""

    platform: str
    label: str
    max_message_length: int
    supports_edit: bool
    supports_threads: bool
    supports_draft_streaming: bool
    markdown_dialect: str
    len_unit: str
    supported_ops: tuple[str, ...] | None
    supports_wake_at: bool
    raw: dict[str, Any]
    supports_idempotent_send: bool = False
    supports_ack_batch: bool = False
    buffered: int | None = None
    """PROTOCOL 7.2: unacked entries the connector sends right after this descriptor."""


def parse_descriptor(frame: dict[str, Any]) -> Descriptor:
    """Validate a ``descriptor`` frame's object.

    ``max_message_length`` that is not a number of at least 1 (non-numeric, <= 0, a fraction
    below 1, NaN or infinite) becomes 4096; a fractional one is truncated. Raises
    ``ProtocolError`` naming the missing required keys, or when ``descriptor`` is not an object.
    """
    d = frame.get("descriptor")
    if not isinstance(d, dict):
        raise ProtocolError("descriptor frame has no 'descriptor' object")
    missing = [k for k in DESCRIPTOR_REQUIRED if k not in d]
    if missing:
        raise ProtocolError(f"descriptor lacks required keys: {', '.join(missing)}")
    mml = d.get("max_message_length")
    if isinstance(mml, bool) or not isinstance(mml, int | float) or not 1 <= mml < math.inf:
        mml = DEFAULT_MAX_MESSAGE_LENGTH
    ops = d.get("supported_ops")
    ops_t = tuple(o for o in ops if isinstance(o, str)) if isinstance(ops, list) else None
    return Descriptor(
        platform=str(d.get("platform")),
        label=str(d.get("label")),
        max_message_length=int(mml),
        supports_edit=bool(d.get("supports_edit")),
        supports_threads=bool(d.get("supports_threads")),
        supports_draft_streaming=bool(d.get("supports_draft_streaming")),
        markdown_dialect=str(d.get("markdown_dialect")),
        len_unit=str(d.get("len_unit")),
        supported_ops=ops_t,
        supports_wake_at=d.get("supports_wake_at") is True,
        raw=d,
        supports_idempotent_send=d.get("supports_idempotent_send") is True,
        supports_ack_batch=d.get("supports_ack_batch") is True,
        buffered=_count(d.get("buffered")),
    )


def _count(value: Any) -> int | None:
    """A non-negative int count, else None (a missing or malformed ``buffered``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


# --- gateway -> connector -------------------------------------------------------------------


def hello(platform: str, bot_id: str, wake_url: str | None = None) -> dict[str, Any]:
    """``hello`` for one fronted identity; ``wakeUrl`` only when the sidecar has one."""
    f: dict[str, Any] = {"type": "hello", "platform": platform, "botId": bot_id}
    if wake_url:
        f["wakeUrl"] = wake_url
    return f


def outbound(
    request_id: str,
    action: dict[str, Any],
    platform: str | None = None,
    bot_id: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """``outbound`` request carrying ``action`` (an object with ``op``); ``idempotencyKey``
    (PROTOCOL 7.1, 1-128 chars) only when given."""
    f: dict[str, Any] = {"type": "outbound", "requestId": request_id, "action": action}
    if platform is not None:
        f["platform"] = platform
    if bot_id is not None:
        f["botId"] = bot_id
    if idempotency_key is not None:
        f["idempotencyKey"] = idempotency_key
    return f


IDEMPOTENCY_KEY_MAX = 128
"""Longest ``idempotencyKey`` a connector must accept (PROTOCOL 7.1), characters."""


def is_declined(result: dict[str, Any]) -> bool:
    """True when an ``outbound_result`` is a definite egress decline (PROTOCOL 7.4): never
    resent, with or without an idempotency key. An ``ack lost`` error is not a decline."""
    if result.get("code") == "egress_declined":
        return True
    error = result.get("error")
    return isinstance(error, str) and error.startswith("egress declined:")


def going_idle(wake_at: float | None = None) -> dict[str, Any]:
    """``going_idle``; ``wake_at`` (Unix seconds) becomes the RFC 3339 ``wakeAt``."""
    f: dict[str, Any] = {"type": "going_idle"}
    if wake_at is not None:
        f["wakeAt"] = rfc3339(wake_at)
    return f


def inbound_ack(buffer_id: str) -> dict[str, Any]:
    """Durable-handoff receipt for one ``inbound`` carrying ``bufferId``."""
    return {"type": "inbound_ack", "bufferId": buffer_id}


def inbound_ack_batch(buffer_ids: list[str]) -> dict[str, Any]:
    """PROTOCOL 7.3: one receipt for many persisted entries (needs ``supports_ack_batch``)."""
    return {"type": "inbound_ack", "bufferIds": list(buffer_ids)}


def encode_inbound_ack(buffer_id: str) -> str:
    """``inbound_ack`` already encoded as an NDJSON line (the hot path of replay)."""
    return '{"type":"inbound_ack","bufferId":' + json.dumps(buffer_id) + "}\n"


def encode_inbound_ack_batch(buffer_ids: list[str]) -> str:
    """A batched ``inbound_ack`` (PROTOCOL 7.3) encoded as one NDJSON line; ASCII-escaped, so a
    quarantined frame's malformed bufferId is still acked byte for byte."""
    return '{"type":"inbound_ack","bufferIds":' + json.dumps(buffer_ids) + "}\n"


def interrupt(session_key: str, reason: str | None = None) -> dict[str, Any]:
    """A mid-turn stop travelling outward."""
    return {"type": "interrupt", "session_key": session_key, "reason": reason}


# --- connector -> gateway -------------------------------------------------------------------


def descriptor(
    platform: str, *, supports_wake_at: bool = True, buffered: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """The reference connector's descriptor frame for ``platform``; ``buffered`` (PROTOCOL
    7.2) only on the descriptor that answers a handshake's first hello."""
    d: dict[str, Any] = {
        "contract_version": CONTRACT_VERSION,
        "platform": platform,
        "label": f"hermes-relay ({platform})",
        "max_message_length": DEFAULT_MAX_MESSAGE_LENGTH,
        "supports_draft_streaming": False,
        "supports_edit": True,
        "supports_threads": False,
        "markdown_dialect": "commonmark",
        "len_unit": "chars",
        "supported_ops": list(SUPPORTED_OPS),
        "supports_wake_at": supports_wake_at,
        "supports_idempotent_send": True,
        "supports_ack_batch": True,
    }
    if buffered is not None:
        d["buffered"] = buffered
    d.update(overrides)
    return {"type": "descriptor", "descriptor": d}


def outbound_result(request_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """Answer to one ``outbound``."""
    return {"type": "outbound_result", "requestId": request_id, "result": result}


def inbound(event: dict[str, Any], buffer_id: str | None = None) -> dict[str, Any]:
    """A user event; ``bufferId`` when it was persisted by the connector."""
    f: dict[str, Any] = {"type": "inbound", "event": event}
    if buffer_id is not None:
        f["bufferId"] = buffer_id
    return f


def going_idle_ack() -> dict[str, Any]:
    """The connector flipped this instance to buffered-only."""
    return {"type": "going_idle_ack"}
