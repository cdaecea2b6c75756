"""Raw relay frames as a connector would put them on the wire, for tests."""

from __future__ import annotations

import json
from typing import Any


def inbound(bid: str, chat_id: Any, message_id: Any, text: str = "hi") -> str:
    """One inbound frame line, ASCII-escaped (so a lone surrogate travels as ``\\ud800``)."""
    return (
        json.dumps(
            {
                "type": "inbound",
                "bufferId": bid,
                "event": {
                    "text": text,
                    "message_type": "text",
                    "message_id": message_id,
                    "source": {"platform": "relay", "chat_id": chat_id, "user_id": "u1", "profile": None},
                },
            }
        )
        + "\n"
    )
