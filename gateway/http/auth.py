"""Who may poke ``/wake`` and hold ``/presence`` (SPEC section 2), pure.

Accepted: ``Authorization: Bearer <HERMES_WAKE_SECRET>`` (constant-time compare, when set) or a
valid relay upgrade token for this gateway's id (when a relay id and secret are set: what the
reference connector sends). Only with neither secret configured (local dev) is everyone let in.
Any header that does not parse (non-ASCII bytes, garbage, a malformed token) is refused.
"""

from __future__ import annotations

import hmac

from relay.errors import TokenError
from relay.protocol.token import bearer_of, verify_token


def _raw(text: str) -> bytes:
    """``text`` as bytes; aiohttp decodes header bytes as UTF-8 with ``surrogateescape``, so
    this gives the bytes that were sent back (never raises for such a string)."""
    return text.encode("utf-8", "surrogateescape")


def wake_authorized(
    header: str | None,
    *,
    wake_secret: str | None,
    gateway_id: str | None,
    relay_secret: str | None,
    now: float,
) -> bool:
    """True when the ``Authorization`` header value may poke or hold presence.

    ``now``: Unix seconds, for the relay token's expiry. Never raises: a header that is not
    ``Bearer <token>``, holds bytes that are not UTF-8, or carries a token that does not verify
    is False.
    """
    relay_auth = bool(gateway_id and relay_secret)
    if not wake_secret and not relay_auth:
        return True
    try:
        token = bearer_of(header)
        if token is None:
            return False
        if wake_secret and hmac.compare_digest(_raw(token), _raw(wake_secret)):
            return True
        if gateway_id and relay_secret:
            return verify_token(token, {gateway_id: relay_secret}, now) == gateway_id
    except (TokenError, ValueError, UnicodeError, TypeError, OverflowError):
        return False
    return False
