"""Secrets never reach logs or state (SPEC 8.1): ``redact`` and ``configured_secrets``."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.agent.redact import REDACTED, configured_secrets, redact
from gateway.config import load_config


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Authorization: Bearer abc.DEF-123", "abc.DEF-123"),
        ("authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ('{"Authorization": "Bearer tok with spaces"}', "tok with spaces"),
        ("{'authorization': 'Token zzz'}", "zzz"),
        ("sent bearer eyJhbGciOi.payload.sig== to it", "eyJhbGciOi.payload.sig=="),
        ('{"api_key": "pk_live_12345"}', "pk_live_12345"),
        ("api-key: hunter2hunter", "hunter2hunter"),
        ("X-Api-Key: hunter2hunter", "hunter2hunter"),
        ("apikey='quoted value'", "quoted value"),
        ("https://x/v1?apikey=abc123&model=m", "abc123"),
        ("api_key=abc123&model=m", "abc123"),
        ("invalid key sk-live-abcdef123456", "sk-live-abcdef123456"),
        ("key:sk-proj_ABCDEFGH", "sk-proj_ABCDEFGH"),
    ],
    ids=[
        "auth-bearer",
        "auth-basic",
        "json-auth-spaces",
        "py-dict-auth-token",
        "bare-bearer-jwt",
        "json-api-key",
        "api-key-header",
        "x-api-key-header",
        "apikey-quoted",
        "url-query-apikey",
        "api-key-query",
        "sk-live",
        "sk-proj",
    ],
)
def test_redact_removes_secret_shapes(text: str, gone: str) -> None:
    """Authorization/Bearer values, api_key values and sk- tokens become [redacted]."""
    out = redact(text)
    assert gone not in out
    assert REDACTED in out


@pytest.mark.parametrize(
    "text",
    [
        "authorization failed for this request",
        "task-abcdefghijkl and mask-1234567890",
        "sk-short",
        "model gpt-4o answered 401",
    ],
    ids=["auth-word", "task-mask-words", "short-sk", "model-name"],
)
def test_redact_leaves_ordinary_text(text: str) -> None:
    """Words that only look related are kept as they are."""
    assert redact(text) == text


def test_redact_keeps_keys_and_the_rest_of_the_text() -> None:
    """Only the value goes: the key, quotes and surrounding fields stay readable."""
    out = redact('{"error": "bad", "api_key": "abc", "model": "m1"}')
    assert out == '{"error": "bad", "api_key": "[redacted]", "model": "m1"}'
    assert redact("api_key=abc&model=m1") == "api_key=[redacted]&model=m1"


def test_redact_given_secrets_in_every_spelling() -> None:
    """A configured value is removed raw, JSON-escaped and URL-encoded; short ones are ignored."""
    secret = 'pa/ss"word'
    text = f'raw {secret} json "pa/ss\\"word" url pa%2Fss%22word short abc'
    out = redact(text, [secret, "abc", ""])
    assert "pa/ss" not in out
    assert "pa%2Fss" not in out
    assert out.endswith("short abc")
    assert out.count(REDACTED) == 3


def test_redact_longer_secret_wins_over_its_prefix() -> None:
    """A secret that contains another is replaced whole, leaving no tail behind."""
    assert redact("v=abcd-efgh-ijkl", ["abcd", "abcd-efgh-ijkl"]) == f"v={REDACTED}"


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer s3cret-value",
        "api_key=s3cret-value&x=1",
        '{"api_key": "s3cret-value"}',
        "token sk-abcdefghijkl and s3cret-value",
    ],
    ids=["auth-bearer", "api-key-query", "json-api-key", "sk-token"],
)
def test_redact_is_idempotent(text: str) -> None:
    """Redacting twice gives the same text (no ``[redacted]]`` artefacts)."""
    once = redact(text, ["s3cret-value"])
    assert "s3cret-value" not in once
    assert redact(once, ["s3cret-value"]) == once
    assert "]]" not in once


def test_configured_secrets_collects_provider_relay_and_wake(tmp_path: Path) -> None:
    """Every provider key env value plus the relay and wake secrets, de-duplicated, non-empty."""
    (tmp_path / "config.yaml").write_text(
        "providers:\n"
        "  a: {base_url: 'http://a/v1', api_key_env: A_KEY}\n"
        "  b: {base_url: 'http://b/v1', api_key_env: B_KEY}\n"
        "  c: {base_url: 'http://c/v1', api_key_env: UNSET_KEY}\n"
        "  d: {base_url: 'http://d/v1'}\n"
    )
    env = {
        "A_KEY": "key-a-123",
        "B_KEY": "key-a-123",
        "GATEWAY_RELAY_SECRET": "relay-s",
        "HERMES_WAKE_SECRET": "wake-s",
        "UNRELATED": "not-a-secret",
    }
    config = load_config(tmp_path, env)
    assert configured_secrets(config, env) == ["key-a-123", "relay-s", "wake-s"]
    assert configured_secrets(load_config(tmp_path, {}), {}) == []
