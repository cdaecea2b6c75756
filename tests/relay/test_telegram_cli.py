"""``hermes-relay`` CLI for SPEC 8.3: ``--telegram`` parsing, the required webhook secret, the
public-bind refusal without an ingress token, and ``telegram set-webhook``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from common.errors import ConfigError
from relay.cli import is_loopback, main, parse_telegram
from tests.relay.telegram_fakes import FakeBotApi


@pytest.fixture
async def api() -> AsyncIterator[FakeBotApi]:
    fake = await FakeBotApi().start()
    yield fake
    await fake.close()


def test_parse_telegram_merges_env_and_flags_flag_wins() -> None:
    bots = parse_telegram(["a=1:FLAG", "c=3:x=y"], "a=1:ENV, b=2:B")
    assert bots == {"a": "1:FLAG", "b": "2:B", "c": "3:x=y"}


@pytest.mark.parametrize(
    "item",
    ["noequals", "a=", "a=notoken", "a=:abc", "=1:x", "a:b=1:x"],
    ids=["no-equals", "no-token", "no-colon", "empty-bot-id", "empty-name", "colon-in-name"],
)
def test_parse_telegram_refuses_bad_items(item: str) -> None:
    with pytest.raises(ConfigError):
        parse_telegram([item], None)


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_serve_needs_the_webhook_secret_with_a_bot(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_TELEGRAM_WEBHOOK_SECRET", raising=False)
    assert main(["serve", "--telegram", "gw=1:abc"]) == 2
    assert "--telegram-webhook-secret" in _one_error_line(capsys.readouterr().err)


def test_serve_refuses_a_public_bind_without_an_ingress_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_INGRESS_TOKEN", raising=False)
    monkeypatch.delenv("RELAY_GATEWAYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--gateway", "g=s"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--ingress-token" in line
    assert "--insecure-ingress" in line


async def test_set_webhook_registers_the_url_with_the_secret(
    api: FakeBotApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", api.base)
    monkeypatch.setenv("RELAY_TELEGRAM", "gw=123:tok")
    monkeypatch.setenv("RELAY_TELEGRAM_WEBHOOK_SECRET", "s3")
    args = ["telegram", "set-webhook", "--gateway", "gw", "--url", "https://relay.example/"]
    assert await asyncio.to_thread(main, args) == 0
    assert capsys.readouterr().out.strip() == "webhook set: https://relay.example/telegram/gw"
    [(token, method, body)] = api.calls
    assert (token, method) == ("123:tok", "setWebhook")
    assert body == {
        "url": "https://relay.example/telegram/gw",
        "secret_token": "s3",
        "allowed_updates": ["message"],
    }
    api.fail_next("setWebhook", 400, "Bad Request: bad webhook: HTTPS url must be provided for webhook")
    assert await asyncio.to_thread(main, args) == 1
    assert "HTTPS url must be provided" in _one_error_line(capsys.readouterr().err)


def test_set_webhook_needs_a_bot_for_the_gateway(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_TELEGRAM", raising=False)
    args = [
        "telegram",
        "set-webhook",
        "--gateway",
        "gw",
        "--url",
        "https://x",
        "--telegram-webhook-secret",
        "s",
    ]
    assert main(args) == 2
    assert "gw" in _one_error_line(capsys.readouterr().err)
