"""One OpenAI-compatible ``POST {base_url}/chat/completions`` (aiohttp), SPEC section 3."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.agent.resolve import Resolved
from relay.errors import SidecarError


class ProviderError(SidecarError):
    """The provider call failed: network error, non-2xx, bad body or an empty answer."""

    def __init__(self, message: str, end_reason: str) -> None:
        super().__init__(message)
        self.end_reason = end_reason  # provider_error | empty_answer | timeout


@dataclass(frozen=True)
class Completion:
    """A model answer with its usage; cost in USD when the provider reports one."""

    text: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    duration_s: float


async def complete(
    http: aiohttp.ClientSession,
    target: Resolved,
    messages: list[dict[str, str]],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> Completion:
    """Ask ``target``'s model for one chat completion.

    The API key comes from the env var ``providers.<name>.api_key_env`` names (no header when
    unset). Raises ``ProviderError`` with ``end_reason`` provider_error, timeout or
    empty_answer.
    """
    env = os.environ if env is None else env
    headers = {"Content-Type": "application/json"}
    if target.provider.api_key_env and env.get(target.provider.api_key_env):
        headers["Authorization"] = f"Bearer {env[target.provider.api_key_env]}"
    url = f"{target.provider.base_url}/chat/completions"
    started = time.perf_counter()
    try:
        async with http.post(
            url, json={"model": target.model, "messages": messages}, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            if resp.status // 100 != 2:
                body = (await resp.text())[:200]
                raise ProviderError(f"provider {target.provider.name} answered {resp.status}: "
                                    f"{body}", "provider_error")
            data: Any = await resp.json(content_type=None)
    except TimeoutError:
        raise ProviderError(f"provider {target.provider.name} timed out after {timeout_s} s",
                            "timeout") from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise ProviderError(f"provider {target.provider.name} failed: {exc}",
                            "provider_error") from None
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ProviderError("provider answer has no choices[0].message.content",
                            "provider_error") from None
    if not isinstance(text, str) or not text.strip():
        raise ProviderError("provider returned an empty answer", "empty_answer")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    cost = usage.get("cost", usage.get("total_cost"))
    return Completion(
        text=text,
        model=str(data.get("model") or target.model),
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cost_usd=float(cost) if isinstance(cost, int | float) else None,
        duration_s=time.perf_counter() - started,
    )


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
