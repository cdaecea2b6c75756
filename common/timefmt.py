"""The one RFC 3339 format of the project: UTC, ``Z``, millisecond precision
(``2026-01-31T09:00:00.000Z``), used on the wire, in JSON documents and in CLI output."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ts: float | datetime) -> str:
    """Format Unix seconds or an aware datetime as RFC 3339 UTC with a ``Z`` (ms precision)."""
    dt = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def rfc3339_or_none(ts: float | None) -> str | None:
    """``rfc3339(ts)``, or ``None`` when ``ts`` is ``None`` (optional times in JSON documents)."""
    return None if ts is None else rfc3339(ts)


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 time with an explicit offset (``Z`` or ``+hh:mm``) to Unix seconds.

    Raises ``ValueError`` naming the text when it has no offset or does not parse.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"time {text!r} is not an RFC 3339 string")
    raw = text.strip()
    if raw[-1] in "zZ":
        raw = raw[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"time {text!r} is not RFC 3339 (e.g. 2026-01-31T09:00:00Z)") from None
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset; add Z or +hh:mm")
    return dt.timestamp()
