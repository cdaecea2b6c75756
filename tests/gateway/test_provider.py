"""The provider call (SPEC 3, 8.1): unusable answers are ProviderError, garbage usage is None,
and no error message carries the API key."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL as YURL

from gateway.agent.provider import Completion, ProviderError, complete, parse_cost, parse_tokens
from gateway.agent.resolve import Resolved
from gateway.config import Provider
from sim.outside import MockResponse

URL = "http://llm.test/v1/chat/completions"
KEY = "k3y-Value-0123"  # does not start with sk-: only the exact-value rule can catch it
TARGET = Resolved("default", "asked-model", Provider("p1", "http://llm.test/v1", "LLM_KEY"))
ENV = {"LLM_KEY": KEY}
MESSAGES = [{"role": "user", "content": "hi"}]


def answer(content: Any = "hello", **extra: Any) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": content}}], **extra}


class Mocked:
    """``aioresponses`` for the one provider URL, with responses built as ``MockResponse``
    (aioresponses 0.7.9 and aiohttp 3.14: see ``sim.outside.MockResponse``)."""

    def __init__(self, m: aioresponses) -> None:
        self.m = m

    def post(self, **kwargs: Any) -> None:
        self.m.post(URL, response_class=MockResponse, **kwargs)

    def sent(self) -> dict[str, Any]:
        """The keyword arguments of the first request made."""
        return dict(self.m.requests[("POST", YURL(URL))][0].kwargs)


@pytest.fixture
def mocked() -> Iterator[Mocked]:
    with aioresponses() as m:
        yield Mocked(m)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(http: aiohttp.ClientSession) -> Completion:
    return await complete(http, TARGET, MESSAGES, env=ENV)


async def test_complete_reads_answer_usage_and_model(mocked: Mocked, http: aiohttp.ClientSession) -> None:
    """A good answer gives text, token counts, cost and the model the provider names."""
    mocked.post(
        payload=answer(
            "hi there",
            model="served-model",
            usage={"prompt_tokens": 12, "completion_tokens": 3.0, "cost": 0.25},
        )
    )
    c = await call(http)
    assert (c.text, c.input_tokens, c.output_tokens, c.cost_usd) == ("hi there", 12, 3, 0.25)
    assert (c.model, c.answered_model) == ("served-model", "served-model")
    sent = mocked.sent()
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["json"] == {"model": "asked-model", "messages": MESSAGES}


@pytest.mark.parametrize(
    "model", [None, 42, "", ["m"], "x" * 300], ids=["none", "int", "empty", "list", "too-long"]
)
async def test_complete_model_falls_back_to_asked(
    mocked: Mocked, http: aiohttp.ClientSession, model: Any
) -> None:
    """Without a usable ``model`` string, answered_model is None and model is the asked one."""
    mocked.post(payload=answer(model=model))
    c = await call(http)
    assert (c.model, c.answered_model) == ("asked-model", None)


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        "[1, 2, 3]",
        '"just a string"',
        "null",
        "",
        '{"choices": []}',
        '{"choices": "abc"}',
        '{"choices": [{"message": "hi"}]}',
        '{"choices": [{"message": {}}]}',
        '{"choices": [{"message": {"content": 42}}]}',
        '{"choices": [{"message": {"content": ["part"]}}]}',
        '{"choices": [{"message": {"content": {"text": "x"}}}]}',
        "[" * 5000 + "]" * 5000,  # deeper than the JSON parser recurses
        '{"usage": {"prompt_tokens": ' + "9" * 5000 + "}}",
        b'{"choices": [{"message": {"content": "\xff\xfe"}}]}',
    ],
    ids=[
        "not-json",
        "array",
        "string",
        "null",
        "empty",
        "choices-empty",
        "choices-str",
        "message-str",
        "message-empty",
        "content-int",
        "content-list",
        "content-dict",
        "deep-nesting",
        "huge-int",
        "invalid-utf8",
    ],
)
async def test_complete_unusable_body_is_provider_error(
    mocked: Mocked, http: aiohttp.ClientSession, body: str | bytes
) -> None:
    """A body that is not JSON, not an object, lacks the content or has a non-string one fails."""
    mocked.post(body=body, content_type="application/json")
    with pytest.raises(ProviderError) as err:
        await call(http)
    assert err.value.end_reason == "provider_error"


@pytest.mark.parametrize("content", [None, "", "   \n\t"], ids=["none", "empty", "whitespace"])
async def test_complete_empty_content_is_empty_answer(
    mocked: Mocked, http: aiohttp.ClientSession, content: Any
) -> None:
    """A null or blank content is ProviderError with end_reason empty_answer."""
    mocked.post(payload=answer(content))
    with pytest.raises(ProviderError) as err:
        await call(http)
    assert err.value.end_reason == "empty_answer"


@pytest.mark.parametrize(
    "raw",
    ['"lots"', "1e400", "-1e400", "[1]", "-5", "true", "1" + "0" * 30, "{}", "NaN", "1e13"],
    ids=["string", "overflow", "neg-overflow", "list", "negative", "bool", "huge", "dict", "nan", "too-big"],
)
async def test_complete_garbage_usage_is_none(mocked: Mocked, http: aiohttp.ClientSession, raw: str) -> None:
    """Usage fields that do not parse are None (never a crash, never a wrong number)."""
    body = (
        '{"choices": [{"message": {"content": "ok"}}], "usage": {'
        f'"prompt_tokens": {raw}, "completion_tokens": {raw}, "cost": {raw}}}}}'
    )
    mocked.post(body=body, content_type="application/json")
    c = await call(http)
    assert (c.text, c.input_tokens, c.output_tokens, c.cost_usd) == ("ok", None, None, None)


@pytest.mark.parametrize(
    "usage", [None, "lots", [], {"prompt_tokens": None}], ids=["none", "string", "list", "null-field"]
)
async def test_complete_missing_usage_is_none(
    mocked: Mocked, http: aiohttp.ClientSession, usage: Any
) -> None:
    """No usage object (or no counts in it) gives None counts and cost."""
    mocked.post(payload=answer(usage=usage))
    c = await call(http)
    assert (c.input_tokens, c.output_tokens, c.cost_usd) == (None, None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (7, 7),
        (7.0, 7),
        (10**12, 10**12),
        (10**12 + 1, None),
        (10**30, None),
        (-5, None),
        (True, None),
        (False, None),
        ("12", None),
        ([1], None),
        (float("inf"), None),
        (float("nan"), None),
        (2.5, None),
        (None, None),
    ],
    ids=[
        "zero",
        "int",
        "integral-float",
        "max",
        "over-max",
        "huge",
        "negative",
        "true",
        "false",
        "str",
        "list",
        "inf",
        "nan",
        "fractional",
        "none",
    ],
)
def test_parse_tokens_accepts_only_plausible_counts(value: Any, expected: int | None) -> None:
    """Non-negative ints and integral floats up to 10**12; everything else is None."""
    assert parse_tokens(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (0.5, 0.5),
        (3, 3.0),
        (10**6, 1e6),
        (10**6 + 1, None),
        (10**400, None),
        (-0.01, None),
        (True, None),
        ("0.5", None),
        (float("inf"), None),
        (float("nan"), None),
        ([0.5], None),
    ],
    ids=[
        "zero",
        "float",
        "int",
        "max",
        "over-max",
        "huge-int",
        "negative",
        "bool",
        "str",
        "inf",
        "nan",
        "list",
    ],
)
def test_parse_cost_accepts_only_plausible_usd(value: Any, expected: float | None) -> None:
    """A finite non-negative number up to 10**6 USD; everything else is None."""
    assert parse_cost(value) == expected


async def test_complete_total_cost_used_when_cost_unusable(
    mocked: Mocked, http: aiohttp.ClientSession
) -> None:
    """``usage.total_cost`` is read when ``usage.cost`` is absent or garbage."""
    mocked.post(payload=answer(usage={"cost": "cheap", "total_cost": 0.5}))
    assert (await call(http)).cost_usd == 0.5


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, '{"error": "invalid key sk-live-abcdef123456"}'),
        (401, f'{{"error": "invalid api key {KEY}"}}'),
        (403, f'{{"error": {{"message": "denied", "api_key": "{KEY}"}}}}'),
        (400, f"echo of headers: Authorization: Bearer {KEY}"),
        (500, "x" * 195 + KEY),  # the key straddles the 200-character cut
    ],
    ids=["401-sk-token", "401-key", "403-json-api-key", "400-bearer-echo", "500-key-at-cut"],
)
async def test_complete_error_body_is_redacted(
    mocked: Mocked, http: aiohttp.ClientSession, status: int, body: str
) -> None:
    """A non-2xx body echoing the key (exact value or sk- token) never reaches the message."""
    mocked.post(status=status, body=body)
    with pytest.raises(ProviderError) as err:
        await call(http)
    msg = str(err.value)
    assert err.value.end_reason == "provider_error"
    assert f"answered {status}" in msg
    assert KEY not in msg
    assert KEY[:6] not in msg
    assert "sk-live" not in msg
    assert len(msg) < 300


async def test_complete_network_error_is_redacted(mocked: Mocked, http: aiohttp.ClientSession) -> None:
    """A transport error whose text holds the key is a redacted provider_error."""
    mocked.post(exception=aiohttp.ClientConnectionError(f"refused for token {KEY}"))
    with pytest.raises(ProviderError) as err:
        await call(http)
    assert err.value.end_reason == "provider_error"
    assert KEY not in str(err.value)
    assert "[redacted]" in str(err.value)


async def test_complete_timeout_is_timeout(mocked: Mocked, http: aiohttp.ClientSession) -> None:
    """A provider that does not answer in time is end_reason timeout."""
    mocked.post(exception=TimeoutError())
    with pytest.raises(ProviderError) as err:
        await complete(http, TARGET, MESSAGES, env=ENV, timeout_s=0.5)
    assert err.value.end_reason == "timeout"
    assert "0.5 s" in str(err.value)


async def test_complete_without_key_sends_no_authorization(
    mocked: Mocked, http: aiohttp.ClientSession
) -> None:
    """With the key's env var unset no Authorization header goes out."""
    mocked.post(payload=answer())
    await complete(http, TARGET, MESSAGES, env={})
    sent = mocked.sent()
    assert "Authorization" not in sent["headers"]


HERMES = Resolved("default", "asked-model", Provider("agent", "http://llm.test/v1", "LLM_KEY", kind="hermes"))


@pytest.mark.parametrize(
    ("passed", "answered", "expected"),
    [
        ("sess-1", None, "sess-1"),
        ("sess-1", "sess-1", "sess-1"),
        ("sess-1", " sess-2 ", "sess-2"),
        ("sess-1", "   ", "sess-1"),
        ("sess-1", "x" * 300, "sess-1"),
    ],
    ids=["no-header-back", "same-back", "server-picks-new", "blank-back", "too-long-back"],
)
async def test_complete_hermes_sends_and_reads_session_id(
    mocked: Mocked, http: aiohttp.ClientSession, passed: str, answered: str | None, expected: str
) -> None:
    """kind hermes sends X-Hermes-Session-Id and reports the id the response names, else the sent one."""
    mocked.post(payload=answer(), headers={} if answered is None else {"X-Hermes-Session-Id": answered})
    c = await complete(http, HERMES, MESSAGES, env=ENV, hermes_session_id=passed)
    assert mocked.sent()["headers"]["X-Hermes-Session-Id"] == passed
    assert c.hermes_session_id == expected
    assert mocked.sent()["json"] == {"model": "asked-model", "messages": MESSAGES}


@pytest.mark.parametrize("passed", [None, ""], ids=["none", "empty"])
async def test_complete_hermes_without_id_sends_a_new_uuid4_hex(
    mocked: Mocked, http: aiohttp.ClientSession, passed: str | None
) -> None:
    """The first request of a session sends a fresh uuid4 hex and reports it back."""
    mocked.post(payload=answer())
    c = await complete(http, HERMES, MESSAGES, env=ENV, hermes_session_id=passed)
    sent = mocked.sent()["headers"]["X-Hermes-Session-Id"]
    assert len(sent) == 32
    assert uuid.UUID(hex=sent).version == 4
    assert c.hermes_session_id == sent


async def test_complete_openai_sends_no_hermes_header(mocked: Mocked, http: aiohttp.ClientSession) -> None:
    """kind openai ignores the session id: no header and hermes_session_id None."""
    mocked.post(payload=answer(), headers={"X-Hermes-Session-Id": "ignored"})
    c = await complete(http, TARGET, MESSAGES, env=ENV, hermes_session_id="sess-1")
    assert "X-Hermes-Session-Id" not in mocked.sent()["headers"]
    assert c.hermes_session_id is None
