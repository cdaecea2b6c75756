"""Dial-URL normalisation (PROTOCOL.md section 1)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from common.errors import ConfigError

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def normalise_relay_url(url: str) -> str:
    """Turn a connector base URL into the WebSocket URL to dial.

    Strips whitespace, maps ``https -> wss`` and ``http -> ws``, strips trailing ``/`` and appends
    ``/relay`` unless the path already ends in ``/relay``. Idempotent.

    Raises ``ConfigError`` naming the URL for an empty value, one that does not parse (an
    unclosed ``[``), a scheme other than ws/wss/http/https, a missing host, or a query string
    or fragment.
    """
    raw = url.strip() if isinstance(url, str) else ""
    if not raw:
        raise ConfigError("relay url is empty; expected ws://, wss://, http:// or https://host[/path]")
    try:
        parts = urlsplit(raw)
    except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 bracket
        raise ConfigError(f"relay url {raw!r} does not parse: {exc}") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigError(f"relay url {raw!r} has scheme {parts.scheme!r}; allowed: ws, wss, http, https")
    if not parts.netloc:
        raise ConfigError(f"relay url {raw!r} has no host")
    if parts.query or parts.fragment or raw.endswith(("?", "#")):
        raise ConfigError(f"relay url {raw!r} has a query string or fragment; none is allowed")
    path = parts.path.rstrip("/")
    if not path.endswith("/relay"):
        path += "/relay"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL, e.g. the origin of a wake URL."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}"
