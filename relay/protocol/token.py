"""The HMAC upgrade token (PROTOCOL.md section 1): mint on every dial, verify in the connector.

``token = base64url("<gateway_id>:<exp>:<hex hmac-sha256(secret, "<gateway_id>:<exp>")>")``
without ``=`` padding; ``exp = int(now) + 300``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from common.errors import ConfigError, TokenError

TOKEN_TTL_S = 300
"""Lifetime of every minted token, seconds (always 300)."""
CLOCK_SKEW_LEEWAY_S = 30
"""How far past ``exp`` (seconds) a token is still accepted, for clock skew."""


def validate_gateway_id(gateway_id: str) -> str:
    """Return ``gateway_id`` if usable in a token; raise ``ConfigError`` if empty or has ``:``/``=``."""
    if not isinstance(gateway_id, str) or not gateway_id.strip():
        raise ConfigError("gateway id is empty; expected a non-empty name without ':' or '='")
    if ":" in gateway_id or "=" in gateway_id:
        raise ConfigError(f"gateway id {gateway_id!r} contains ':' or '='; neither is allowed")
    return gateway_id


def _sign(secret: str, signed: str) -> str:
    return hmac.new(secret.encode("utf-8"), signed.encode("utf-8"), hashlib.sha256).hexdigest()


def mint_token(gateway_id: str, secret: str, now: float) -> str:
    """Mint a fresh bearer token for ``gateway_id`` valid for 300 s from ``now`` (Unix seconds)."""
    validate_gateway_id(gateway_id)
    signed = f"{gateway_id}:{int(now) + TOKEN_TTL_S}"
    raw = f"{signed}:{_sign(secret, signed)}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def token_gateway_id(token: str) -> str | None:
    """The gateway id a token claims, unverified (``None`` if it does not parse)."""
    try:
        return _split(token)[0]
    except TokenError:
        return None


EXP_MAX_DIGITS = 18
"""Longest ``exp`` accepted, in ASCII digits (Unix seconds need 10; more is never ours)."""


def _split(token: str) -> tuple[str, int, str]:
    """``(gateway_id, exp, sig)`` of a token; raises only ``TokenError("unauthorized", ...)``.

    The token must be ASCII base64url of UTF-8 text with exactly three ``:``-separated parts and
    an ``exp`` of 1-18 ASCII digits (``str.isdigit`` alone accepts ``"²"`` or ``"٣"``).
    """
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise TokenError("unauthorized", "token is empty or too long")
    if not token.isascii():
        raise TokenError("unauthorized", "token is not ASCII base64url")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise TokenError("unauthorized", "token is not base64url utf-8") from exc
    parts = raw.split(":")
    if len(parts) != 3:
        raise TokenError("unauthorized", "token is not <gateway_id>:<exp>:<sig>")
    gateway_id, exp_text, sig = parts
    if not (exp_text.isascii() and exp_text.isdigit()) or len(exp_text) > EXP_MAX_DIGITS:
        raise TokenError("unauthorized", "token exp is not an integer of ASCII digits")
    return gateway_id, int(exp_text), sig


def verify_token(token: str, secrets: Mapping[str, str], now: float) -> str:
    """Verify a bearer token against the known gateway secrets; return its gateway id.

    Constant-time signature compare; ``exp = 0`` ("never expires") is refused; an ``exp`` further
    ahead than the ttl plus leeway is refused (no minter of ours makes one). Only a token whose
    signature is good but whose ``exp + 30 s`` lies before ``now`` is ``expired``.

    Raises ``TokenError`` with ``reason`` ``"expired"`` or ``"unauthorized"``, and nothing else
    for any ``token`` text (non-ASCII, lone surrogates, odd digits included).
    """
    gateway_id, exp, sig = _split(token)
    secret = secrets.get(gateway_id)
    if secret is None:
        # Still spend a comparison so unknown ids cost what known ones do.
        hmac.compare_digest(sig.encode(), _sign("", f"{gateway_id}:{exp}").encode())
        raise TokenError("unauthorized", "unknown gateway id")
    if not hmac.compare_digest(sig.encode(), _sign(secret, f"{gateway_id}:{exp}").encode()):
        raise TokenError("unauthorized", "bad signature")
    if exp == 0:
        raise TokenError("unauthorized", "exp 0 (never expires) is refused")
    if exp > now + TOKEN_TTL_S + CLOCK_SKEW_LEEWAY_S:
        raise TokenError("unauthorized", "exp is further ahead than the 300 s ttl")
    if now > exp + CLOCK_SKEW_LEEWAY_S:
        raise TokenError("expired", "token ttl lapsed")
    return gateway_id


def bearer_of(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
