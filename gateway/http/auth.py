"""Who may poke ``/wake`` and hold ``/presence`` (SPEC section 2), and who may read
``/status`` (SPEC 8.3), pure.

Accepted: ``Authorization: Bearer <HERMES_WAKE_SECRET>`` (constant-time compare, when set) or a
valid relay upgrade token for this gateway's id (when a relay id and secret are set: what the
reference connector sends). Only with neither secret configured (local dev) is everyone let in.
Any header that does not parse (non-ASCII bytes, garbage, a malformed token) is refused.
"""

from __future__ import annotations

import hmac
import ipaddress

from common.errors import TokenError
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


def is_loopback(remote: str | None) -> bool:
    """True for 127.0.0.0/8, ``::1`` and IPv4-mapped loopback (``::ffff:127.0.0.1``, what a
    dual-stack ``::`` listener sees); False for anything else or an unparseable address."""
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def status_authorized(
    remote: str | None, header: str | None, *, admin_token: str, wake_secret: str | None
) -> bool:
    """``/status``: anyone on loopback; else ``Bearer <admin token>`` (sidecar.json) or
    ``Bearer <HERMES_WAKE_SECRET>`` (constant-time). Never raises."""
    if is_loopback(remote):
        return True
    try:
        token = bearer_of(header)
        if token is None:
            return False
        for expected in (admin_token, wake_secret):
            if expected and hmac.compare_digest(_raw(token), _raw(expected)):
                return True
    except (TokenError, ValueError, UnicodeError, TypeError):
        return False
    return False
