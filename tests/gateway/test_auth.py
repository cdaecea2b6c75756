"""``/wake`` and ``/presence`` auth (SPEC 2): garbage is refused, never an exception."""

from __future__ import annotations

import base64

import pytest

from gateway.http.auth import wake_authorized
from relay.protocol.token import mint_token

NOW = 1.8e9


def ok(header: str | None, wake_secret: str | None = "w4ke") -> bool:
    return wake_authorized(header, wake_secret=wake_secret, gateway_id="gw", relay_secret="rs", now=NOW)


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_wake_authorized_accepts_wake_secret_and_minted_token() -> None:
    """The wake secret and a fresh relay token for this gateway id are both accepted."""
    assert ok("Bearer w4ke") is True
    assert ok(f"Bearer {mint_token('gw', 'rs', NOW)}") is True


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "w4ke",
        "Basic w4ke",
        "Bearer nope",
        "Bearer ²",
        "Bearer w4kë",
        "Bearer \udcff\udcfe",  # bytes that were not UTF-8, as aiohttp hands them over
        "Bearer " + b64("gw:²:abc"),
        "Bearer " + b64("gw:abc"),
        "Bearer " + b64("gw:9" + "9" * 5000 + ":abc"),
        "Bearer " + "A" * 10_000,
        "Bearer !!!not-base64!!!",
        "Bearer " + base64.urlsafe_b64encode(b"\xff\xfe:1:2").decode(),
        "Bearer " + mint_token("other", "rs", NOW),
        "Bearer " + mint_token("gw", "wrong", NOW),
        "Bearer " + mint_token("gw", "rs", NOW - 1000),
    ],
    ids=lambda h: repr(h)[:24],
)
def test_wake_authorized_refuses_garbage(header: str | None) -> None:
    """Non-ASCII, undecodable, malformed, foreign, wrongly signed or expired bearers are False."""
    assert ok(header) is False


def test_wake_authorized_non_ascii_wake_secret_compares_bytes() -> None:
    """A non-ASCII wake secret (surrogate-escaped from the env) matches only itself."""
    secret = "s\udcffcret"
    assert ok(f"Bearer {secret}", wake_secret=secret) is True
    assert ok("Bearer s²cret", wake_secret=secret) is False


def test_wake_authorized_needs_the_relay_token_when_only_a_relay_secret_is_set() -> None:
    """No wake secret but a relay secret: only a valid relay token pokes (SPEC 2)."""
    assert ok(None, wake_secret=None) is False
    assert ok("Bearer \udcff", wake_secret="") is False
    assert ok(f"Bearer {mint_token('gw', 'rs', NOW)}", wake_secret=None) is True


def test_wake_authorized_open_only_with_neither_secret() -> None:
    """Local dev (no wake secret, no relay secret): every poke is let through."""
    assert wake_authorized(None, wake_secret=None, gateway_id=None, relay_secret=None, now=NOW)
    assert wake_authorized("Bearer x", wake_secret="", gateway_id="gw", relay_secret=None, now=NOW)
