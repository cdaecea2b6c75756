"""Who may poke ``/wake`` and hold ``/presence`` (SPEC section 2), pure.

With ``HERMES_WAKE_SECRET`` set: ``Authorization: Bearer <secret>`` (constant-time compare) or a
valid relay upgrade token for this gateway's id. Unset: everyone (a poke only re-dials).
"""

from __future__ import annotations

import hmac

from relay.errors import TokenError
from relay.protocol.token import bearer_of, verify_token


def wake_authorized(
    header: str | None,
    *,
    wake_secret: str | None,
    gateway_id: str | None,
    relay_secret: str | None,
    now: float,
) -> bool:
    """True when the ``Authorization`` header value may poke or hold presence."""
    if not wake_secret:
        return True
    token = bearer_of(header)
    if token is None:
        return False
    if hmac.compare_digest(token.encode(), wake_secret.encode()):
        return True
    if gateway_id and relay_secret:
        try:
            return verify_token(token, {gateway_id: relay_secret}, now) == gateway_id
        except TokenError:
            return False
    return False
