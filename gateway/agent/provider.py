"""One OpenAI-compatible ``POST {base_url}/chat/completions`` (aiohttp), SPEC section 3."""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from common.errors import SidecarError
from gateway.agent.redact import redact
from gateway.agent.resolve import Resolved


class ProviderError(SidecarError):
    """The provider call failed: network error, non-2xx, bad body or an empty answer.

    The message never holds a secret: it is passed through ``redact`` (the API key in use, any
    ``Authorization``/``Bearer``/``api_key``/``sk-`` value) before the error is raised.
    """

    def __init__(self, message: str, end_reason: str) -> None:
        super().__init__(message)
        self.end_reason = end_reason  # provider_error | empty_answer | timeout


MAX_TOKENS = 10**12
"""The largest token count believed; anything above it is recorded as unknown (None)."""
MAX_COST_USD = 10**6
"""The largest cost (USD) believed for one call; anything above it is recorded as None."""
MAX_MODEL_NAME = 256
"""A ``model`` string longer than this (characters) is not taken as a model name."""
ERROR_BODY_CHARS = 200
"""How much of a non-2xx body (after redaction) goes into the error message."""
_ERROR_BODY_READ = 64 * 1024  # bytes read of a non-2xx body, redacted before it is cut


@dataclass(frozen=True)
class Completion:
    """A model answer with its usage.

    ``text``: the answer, verbatim (a non-blank string). ``model``: the model that answered if
    the provider said so, else the one asked for (never None). ``answered_model``: the ``model``
    string of the provider's answer, None when absent or not a usable string.
    ``input_tokens``/``output_tokens``: token counts (ints in 0..10**12), None when the provider
    sent none or garbage. ``cost_usd``: USD (0..10**6) when the provider reports a usable cost,
    else None. ``duration_s``: wall seconds of the HTTP call.
    """

    text: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    duration_s: float
    answered_model: str | None = None
    usage_problem: str | None = None
    """The first ``usage`` field present but unusable (garbage, negative, huge), named with
    its value; such a field is None above. An inbound turn treats it as a failed answer."""
    hermes_session_id: str | None = None
    """``kind: hermes`` only (None for ``openai``): the conversation id to use from now on, the
    response's ``X-Hermes-Session-Id`` when it carries a usable one, else the id that was sent.
    The caller stores it when it differs from the session's (SPEC 8.2)."""


HERMES_SESSION_HEADER = "X-Hermes-Session-Id"
MAX_HERMES_SESSION_ID = 256
"""A response's ``X-Hermes-Session-Id`` longer than this (characters) is not taken as an id."""


def parse_tokens(value: Any) -> int | None:
    """A usage token count: a non-negative int (or integral float) up to 10**12, else None.

    Booleans, strings, lists, NaN/inf, negatives and huge numbers are all None; never raises.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_TOKENS else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value) if 0 <= value <= MAX_TOKENS else None
    return None


def parse_cost(value: Any) -> float | None:
    """A usage cost in USD: a finite non-negative int or float up to 10**6, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and not 0 <= value <= MAX_COST_USD:
        return None  # compared as int: float() of a huge int would overflow
    cost = float(value)
    return cost if math.isfinite(cost) and 0 <= cost <= MAX_COST_USD else None


def _answered_model(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MODEL_NAME:
        return None
    return value


def _answer_text(data: Any) -> str:
    """``choices[0].message.content`` of a decoded body; raises ``ProviderError`` (unredacted
    messages hold no provider text) when the body is not an object, the path is missing, the
    content is not a string (provider_error) or it is blank (empty_answer)."""
    if not isinstance(data, dict):
        raise ProviderError(
            f"provider answer is not a JSON object (got {type(data).__name__})", "provider_error"
        )
    choices = data.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict) or "content" not in message:
        raise ProviderError("provider answer has no choices[0].message.content", "provider_error")
    text = message["content"]
    if text is None:
        raise ProviderError("provider returned an empty answer", "empty_answer")
    if not isinstance(text, str):
        raise ProviderError(
            f"provider answer content is not a string (got {type(text).__name__})", "provider_error"
        )
    if not text.strip():
        raise ProviderError("provider returned an empty answer", "empty_answer")
    return text


async def complete(
    http: aiohttp.ClientSession,
    target: Resolved,
    messages: list[dict[str, str]],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    hermes_session_id: str | None = None,
) -> Completion:
    """Ask ``target``'s model for one chat completion (``timeout_s``: total seconds).

    The API key comes from the env var ``providers.<name>.api_key_env`` names (no header when
    unset). Any answer that is not usable raises ``ProviderError`` (never another exception)
    with ``end_reason`` ``provider_error`` (network error, non-2xx, a body that is not a JSON
    object, no ``choices[0].message.content`` or content that is not a string), ``timeout`` or
    ``empty_answer`` (null or blank content); its message is redacted of the key in use and
    of any ``Authorization``/``Bearer``/``api_key``/``sk-`` value. Usage fields that do not
    parse are None on the ``Completion`` (see ``parse_tokens``, ``parse_cost``).

    ``kind: hermes`` providers (a hermes-agent API server that keeps the conversation, SPEC
    8.2) get the header ``X-Hermes-Session-Id: <hermes_session_id>`` (a new ``uuid4().hex``
    when it is None or empty); ``Completion.hermes_session_id`` is then the id the response
    names in the same header (stripped, when non-empty and at most 256 characters), else the
    one sent. ``messages`` go out as given either way: for ``hermes`` the caller sends only
    the new user message. ``hermes_session_id`` is ignored for ``openai`` providers.
    """
    env = os.environ if env is None else env
    name = target.provider.name
    key = env.get(target.provider.api_key_env) if target.provider.api_key_env else None
    secrets = [key] if key else []
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    sent_id: str | None = None
    if target.provider.kind == "hermes":
        sent_id = hermes_session_id or uuid.uuid4().hex
        headers[HERMES_SESSION_HEADER] = sent_id
    answered_id: str | None = None
    url = f"{target.provider.base_url}/chat/completions"
    started = time.perf_counter()
    try:
        try:
            async with http.post(
                url,
                json={"model": target.model, "messages": messages},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                if resp.status // 100 != 2:
                    raw = await resp.content.read(_ERROR_BODY_READ)
                    body = redact(raw.decode("utf-8", "replace"), secrets)[:ERROR_BODY_CHARS]
                    raise ProviderError(f"provider {name} answered {resp.status}: {body}", "provider_error")
                data: Any = await resp.json(content_type=None)
                if sent_id is not None:
                    answered_id = _hermes_id(resp.headers.get(HERMES_SESSION_HEADER)) or sent_id
        except TimeoutError:
            raise ProviderError(f"provider {name} timed out after {timeout_s} s", "timeout") from None
        except (aiohttp.ClientError, OSError, ValueError, RecursionError) as exc:
            # ValueError: not JSON / not UTF-8 / an int too long to parse; RecursionError: nesting.
            raise ProviderError(
                f"provider {name} failed: {type(exc).__name__}: {exc}", "provider_error"
            ) from None
        text = _answer_text(data)
    except ProviderError as exc:
        raise ProviderError(redact(str(exc), secrets), exc.end_reason) from None
    raw_usage = data.get("usage")
    usage = raw_usage if isinstance(raw_usage, dict) else {}
    cost = parse_cost(usage.get("cost"))
    if cost is None:
        cost = parse_cost(usage.get("total_cost"))
    answered = _answered_model(data.get("model"))
    return Completion(
        text=text,
        model=answered or target.model,
        input_tokens=parse_tokens(usage.get("prompt_tokens")),
        output_tokens=parse_tokens(usage.get("completion_tokens")),
        cost_usd=cost,
        duration_s=time.perf_counter() - started,
        answered_model=answered,
        usage_problem=_usage_problem(raw_usage),
        hermes_session_id=answered_id,
    )


def _hermes_id(value: str | None) -> str | None:
    """A response's session id header: stripped, None when absent, blank or too long."""
    if value is None:
        return None
    value = value.strip()
    return value if 0 < len(value) <= MAX_HERMES_SESSION_ID else None


def _usage_problem(usage: Any) -> str | None:
    """Which ``usage`` field is present but does not parse (None when all are usable)."""
    if usage is None:
        return None
    if not isinstance(usage, dict):
        return f"usage is {type(usage).__name__}, not an object"
    checks = (
        ("prompt_tokens", parse_tokens),
        ("completion_tokens", parse_tokens),
        ("cost", parse_cost),
        ("total_cost", parse_cost),
    )
    for key, parse in checks:
        value = usage.get(key)
        if value is not None and parse(value) is None:
            return f"usage.{key} is not usable ({str(value)[:40]!r})"
    return None


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters, preferring line breaks.

    Joining the chunks gives ``text`` back exactly (the answer stays verbatim).
    """
    limit = max(1, limit)
    out: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit)
        cut = limit if cut <= 0 else cut + 1
        out.append(rest[:cut])
        rest = rest[cut:]
    out.append(rest)
    return out
