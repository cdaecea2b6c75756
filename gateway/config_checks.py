"""Checks for config values (SPEC 2): each turns a raw YAML value into the typed value or raises
``ValueError``/``TypeError``; ``Reader`` applies one to a dotted key and, on failure, keeps the
default with exactly one WARNING naming the key, the value and what is allowed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from common.errors import ConfigError

log = logging.getLogger("gateway.config")


class Reader:
    """Reads dotted keys from the YAML tree; a bad value -> default + one WARNING."""

    def __init__(self, raw: Mapping[str, Any], warnings: list[str]) -> None:
        self.raw = raw
        self.warnings = warnings

    def warn(self, key: str, value: Any, allowed: str, default: Any) -> None:
        msg = f"config {key}={value!r} is invalid ({allowed}); using default {default!r}"
        self.warnings.append(msg)
        log.warning(msg)

    def get(self, key: str, default: Any, check: Callable[[Any], Any], allowed: str) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        if node is None:
            return default
        try:
            return check(node)
        except (TypeError, ValueError, ConfigError):
            self.warn(key, node, allowed, default)
            return default


def check_num(minimum: float, strict: bool = False) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise TypeError
        f = float(v)
        if math.isnan(f) or math.isinf(f) or f < minimum or (strict and f <= minimum):
            raise ValueError
        return f

    return check


def check_int(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError
        if maximum is not None and v > maximum:
            raise ValueError
        return int(v)

    return check


def check_str(v: Any) -> str:
    if not isinstance(v, str | int | float) or isinstance(v, bool):
        raise TypeError
    return str(v).strip()


def check_text(v: Any) -> str | None:
    """A free text (e.g. a system prompt): a string, stripped; blank is None (unset)."""
    if not isinstance(v, str):
        raise TypeError
    return v.strip() or None


def check_choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError
        return str(v)

    return check


def check_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError
    return v


def check_identities(v: Any) -> list[tuple[str, str]]:
    if not isinstance(v, list) or not v:
        raise ValueError
    out = []
    for item in v:
        if not isinstance(item, Mapping) or not isinstance(item.get("platform"), str):
            raise ValueError
        bot = item.get("bot_id", "")
        out.append((item["platform"], "" if bot is None else str(bot)))
    return out


def check_url(v: Any) -> str:
    """An ``http(s)://host[...]`` URL without its trailing ``/``; no host (``http://``) or one
    that does not parse (``http://[::1``) is a ``ValueError``."""
    text = check_str(v)
    if not text.startswith(("http://", "https://")) or not urlsplit(text).hostname:
        raise ValueError
    return text.rstrip("/")


def check_tz(v: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(str(v))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError from exc
    return str(v)
