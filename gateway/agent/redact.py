"""Keep secrets out of logs, state.db and ``/status`` (SPEC 8.1), pure.

``redact(text, secrets)`` replaces with ``[redacted]``:
- the value of an ``Authorization`` header or key (``Authorization: Bearer x``,
  ``"authorization": "Basic x"``), and any ``Bearer <token>``;
- the value of an ``api_key`` / ``api-key`` / ``apikey`` key, JSON (``"api_key": "x"``), header
  (``x-api-key: x``) or form (``api_key=x&...``) style;
- any ``sk-`` token (``sk-`` then 8 or more of ``[A-Za-z0-9_-]``);
- every given secret value of length >= 4, also in its JSON-escaped and URL-encoded spellings.

``configured_secrets(config, env)`` lists the secret values this process holds (provider API
keys by their ``api_key_env``, the relay secret and the wake secret) to pass as ``secrets``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from gateway.config import Config

REDACTED = "[redacted]"
MIN_SECRET_LEN = 4
"""Shorter secret values are not replaced (they would blank out ordinary words)."""

# A key, its closing quote if any, ':' or '=', then the value: a quoted string (up to the same
# quote) or one bare token (plus a leading scheme word such as "Bearer" for Authorization).
_QUOTED_OR_BARE = r"""(?:"(?:[^"\\\r\n]|\\.)*"|'[^'\r\n]*'|{bare})"""
_BARE_TOKEN = r"""(?:\[redacted\]|[^\s"',;&}\[\]]+)"""
_AUTHORIZATION = re.compile(
    r"""(?P<key>\bauthorization["']?\s*[:=]\s*)(?P<value>"""
    + _QUOTED_OR_BARE.format(bare=r"(?:[A-Za-z][A-Za-z0-9_-]*[ \t]+)?" + _BARE_TOKEN)
    + ")",
    re.IGNORECASE,
)
_API_KEY = re.compile(
    r"""(?P<key>\bapi[_-]?key["']?\s*[:=]\s*)(?P<value>""" + _QUOTED_OR_BARE.format(bare=_BARE_TOKEN) + ")",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\bbearer[ \t]+)(?P<value>[A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
_SK_TOKEN = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{8,}")


def _keep_quotes(match: re.Match[str]) -> str:
    """The key kept, its value (quoted: the whole string) replaced; a bare value already
    holding ``[redacted]`` is left as it is (so ``redact`` is idempotent)."""
    value = match.group("value")
    if value[:1] in ("'", '"'):
        return f"{match.group('key')}{value[0]}{REDACTED}{value[0]}"
    if REDACTED in value:
        return match.group(0)
    return f"{match.group('key')}{REDACTED}"


def _spellings(secret: str) -> set[str]:
    """``secret`` as written raw, JSON-escaped and URL-encoded (each may appear in a body)."""
    out = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
    }
    return {s for s in out if len(s) >= MIN_SECRET_LEN}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with secret values replaced by ``[redacted]`` (see the module docstring).

    ``secrets``: literal values to remove wherever they occur (empty or shorter than 4
    characters are ignored; longer ones are replaced first). Idempotent; never raises for a
    ``str`` (a non-``str`` ``text`` is first turned into one with ``str()``).
    """
    if not isinstance(text, str):
        text = str(text)
    values: set[str] = set()
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= MIN_SECRET_LEN:
            values |= _spellings(secret)
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _AUTHORIZATION.sub(_keep_quotes, text)
    text = _API_KEY.sub(_keep_quotes, text)
    text = _BEARER.sub(lambda m: m.group("key") + REDACTED, text)
    return _SK_TOKEN.sub(REDACTED, text)


def configured_secrets(config: Config, env: Mapping[str, str] | None = None) -> list[str]:
    """The secret values to keep out of logs: the env value of every
    ``providers.<name>.api_key_env``, ``GATEWAY_RELAY_SECRET`` and ``HERMES_WAKE_SECRET`` (from
    ``env``, default ``os.environ``, and from ``config``). Non-empty, de-duplicated, in that
    order."""
    env = os.environ if env is None else env
    found: list[str | None] = [env.get(p.api_key_env) for p in config.providers.values() if p.api_key_env]
    found += [
        env.get("GATEWAY_RELAY_SECRET"),
        env.get("HERMES_WAKE_SECRET"),
        config.relay_secret,
        config.wake_secret,
    ]
    out: list[str] = []
    for value in found:
        if value and value not in out:
            out.append(value)
    return out
