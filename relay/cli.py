"""``hermes-relay``: run the reference connector (``serve``); register a Telegram webhook
(``telegram set-webhook``).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT); 2 for bad arguments (one line naming the bad
value, nothing written); 1 when the connector cannot start (port in use, database that cannot be
opened: one line naming the cause, within a second, never a half-started process).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import aiohttp

from common import loop
from common.errors import ConfigError, StartupError
from relay.connector import telegram as tg
from relay.connector.server import RETENTION_S
from relay.connector.store_api import is_pg_url
from relay.protocol.framing import DEFAULT_MAX_FRAME_BYTES
from relay.protocol.token import validate_gateway_id
from relay.serve import serve


def parse_gateways(flags: Sequence[str], env_value: str | None) -> dict[str, str]:
    """Merge ``RELAY_GATEWAYS="id1=s1,id2=s2"`` and ``--gateway ID=SECRET`` flags (flag wins).

    Each item is split at its first ``=``. Raises ``ConfigError`` naming the item when it has no
    ``=``, an empty secret, or an id that is empty or contains ``:``.
    """

    def parse(item: str, where: str) -> tuple[str, str]:
        gid, sep, secret = item.strip().partition("=")
        if not sep or not secret:
            raise ConfigError(f"{where} value {item!r} is not ID=SECRET (a non-empty secret)")
        try:
            validate_gateway_id(gid)
            secret.encode("utf-8")
        except ConfigError as exc:
            raise ConfigError(f"{where} value {item!r}: {exc}") from None
        except UnicodeEncodeError:
            raise ConfigError(f"{where} value for {gid!r} is not valid UTF-8") from None
        return gid, secret

    return _merge_pairs(flags, env_value, "--gateway", "RELAY_GATEWAYS", parse)


def parse_telegram(flags: Sequence[str], env_value: str | None) -> dict[str, str]:
    """Merge ``RELAY_TELEGRAM="id=token,..."`` and ``--telegram ID=BOT_TOKEN`` (flag wins; split
    at the first ``=``). Raises ``ConfigError`` naming the item when it has no ``=``, a bad id, or
    a token without a bot id before ``:``."""

    def parse(item: str, where: str) -> tuple[str, str]:
        gid, sep, token = item.strip().partition("=")
        if not sep or not token or not tg.bot_id_of(token) or ":" not in token:
            raise ConfigError(f"{where} value for {gid!r} is not ID=BOT_TOKEN (a token like 123456:ABC...)")
        try:
            validate_gateway_id(gid)
            token.encode("ascii")
        except ConfigError as exc:
            raise ConfigError(f"{where} value for {gid!r}: {exc}") from None
        except UnicodeEncodeError:
            raise ConfigError(f"{where} value for {gid!r}: the bot token is not ASCII") from None
        return gid, token

    return _merge_pairs(flags, env_value, "--telegram", "RELAY_TELEGRAM", parse)


def _merge_pairs(
    flags: Sequence[str],
    env_value: str | None,
    flag: str,
    env_name: str,
    parse: Callable[[str, str], tuple[str, str]],
) -> dict[str, str]:
    """``ID=VALUE`` items of the comma-separated env value, then of the repeated flag (so a flag
    wins for the same id); ``parse(item, where)`` checks one and raises ``ConfigError``."""
    out: dict[str, str] = {}
    for item in (env_value or "").split(","):
        if item.strip():
            gid, value = parse(item, env_name)
            out[gid] = value
    for item in flags:
        gid, value = parse(item, flag)
        out[gid] = value
    return out


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; any other name or address is public."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _retention_days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of days; expected a finite number >= 1"
        ) from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} days: expected a finite number >= 1 (Telegram resends an update for a day)"
        )
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; expected 1-65535")
    return value


def _metrics_port(text: str) -> int:
    """A port for ``/metrics``, or 0: off."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; expected 0 (off) or 1-65535")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``hermes-relay serve: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hermes-relay", description="Run the hermes-sidecar reference connector.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the reference connector")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_port, default=8765)
    s.add_argument(
        "--db",
        default=None,
        help="the durable state: a SQLite file (default relay.db) or a postgresql:// URL for several"
        " instances on one database (env RELAY_DB)",
    )
    s.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="ID=SECRET",
        help="a gateway allowed to connect (repeatable; also env RELAY_GATEWAYS)",
    )
    s.add_argument("--max-frame-bytes", type=_positive_int, default=DEFAULT_MAX_FRAME_BYTES)
    s.add_argument(
        "--import-sqlite",
        default=None,
        metavar="PATH",
        help="with a postgresql:// --db: copy the SQLite connector database at PATH into it at start,"
        " once, then rename it PATH.imported (absent file: nothing to do; env RELAY_IMPORT_SQLITE)",
    )
    s.add_argument(
        "--retention-days",
        type=_retention_days,
        default=None,
        metavar="DAYS",
        help="delete acked messages, sent replies and seen Telegram update ids after DAYS (>= 1,"
        " default 7; idempotency keys stay at least 7 days); env RELAY_RETENTION_DAYS",
    )
    s.add_argument(
        "--metrics-port",
        type=_metrics_port,
        default=None,
        metavar="PORT",
        help="serve Prometheus GET /metrics on this port of --host, unauthenticated (0: off, the"
        " default; env RELAY_METRICS_PORT)",
    )
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    _telegram_args(s)
    s.add_argument(
        "--ingress-token",
        default=None,
        help="bearer token /ingress/* and /outbox require (env RELAY_INGRESS_TOKEN)",
    )
    s.add_argument(
        "--insecure-ingress",
        action="store_true",
        help="allow a non-loopback bind with gateways configured and no ingress token",
    )
    t = sub.add_parser("telegram", help="Telegram helpers")
    tsub = t.add_subparsers(dest="telegram_command", required=True)
    w = tsub.add_parser("set-webhook", help="register <url>/telegram/<ID> as the bot's webhook")
    w.add_argument("--gateway", required=True, metavar="ID", help="the gateway id whose bot to register")
    w.add_argument("--url", required=True, metavar="PUBLIC_BASE_URL", help="the connector's public base URL")
    _telegram_args(w)
    return p


def _telegram_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--telegram",
        action="append",
        default=[],
        metavar="ID=BOT_TOKEN",
        help="route a Telegram bot's chats to gateway ID (repeatable; also env RELAY_TELEGRAM)",
    )
    p.add_argument(
        "--telegram-webhook-secret",
        default=None,
        help="the webhook's X-Telegram-Bot-Api-Secret-Token (env RELAY_TELEGRAM_WEBHOOK_SECRET)",
    )


def _error(message: str, code: int) -> int:
    print(f"hermes-relay: error: {message}", file=sys.stderr)
    return code


def _webhook_secret(args: argparse.Namespace) -> str | None:
    secret = args.telegram_webhook_secret
    if secret is None:
        secret = os.environ.get("RELAY_TELEGRAM_WEBHOOK_SECRET")
    return secret or None


def _api_base() -> str:
    return os.environ.get("TELEGRAM_API_BASE_URL") or tg.DEFAULT_API_BASE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        bots = parse_telegram(args.telegram, os.environ.get("RELAY_TELEGRAM"))
    except ConfigError as exc:
        return _error(str(exc), 2)
    secret = _webhook_secret(args)
    if args.command == "telegram":
        return set_webhook_command(args.gateway, args.url, bots, secret)
    try:
        secrets = parse_gateways(args.gateway, os.environ.get("RELAY_GATEWAYS"))
    except ConfigError as exc:
        return _error(str(exc), 2)
    if bots and secret is None:
        return _error(
            "--telegram-webhook-secret (or RELAY_TELEGRAM_WEBHOOK_SECRET) is required when a Telegram bot"
            " is configured",
            2,
        )
    ingress_token = args.ingress_token
    if ingress_token is None:
        ingress_token = os.environ.get("RELAY_INGRESS_TOKEN")
    ingress_token = ingress_token or None
    if (
        (secrets or bots)
        and ingress_token is None
        and not is_loopback(args.host)
        and not args.insecure_ingress
    ):
        return _error(
            f"--host {args.host} is not loopback and gateways are configured: set --ingress-token"
            " (or RELAY_INGRESS_TOKEN), or pass --insecure-ingress",
            2,
        )
    retention_days = args.retention_days
    if retention_days is None:
        try:
            retention_days = _retention_days(
                os.environ.get("RELAY_RETENTION_DAYS") or str(RETENTION_S / 86400)
            )
        except argparse.ArgumentTypeError as exc:
            return _error(f"RELAY_RETENTION_DAYS {exc}", 2)
    metrics_port = args.metrics_port
    if metrics_port is None:
        try:
            metrics_port = _metrics_port(os.environ.get("RELAY_METRICS_PORT") or "0")
        except argparse.ArgumentTypeError as exc:
            return _error(f"RELAY_METRICS_PORT {exc}", 2)
    if metrics_port == args.port:
        return _error(f"--metrics-port {metrics_port} is --port: give /metrics a port of its own", 2)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db = args.db if args.db is not None else (os.environ.get("RELAY_DB") or "relay.db")
    import_sqlite = args.import_sqlite or os.environ.get("RELAY_IMPORT_SQLITE") or None
    if import_sqlite is not None and not is_pg_url(db):
        # The SQLite store itself, or no file to move: nothing to do. Only a file that exists
        # and would be left behind by another SQLite store is an error.
        if os.path.exists(import_sqlite) and os.path.realpath(import_sqlite) != os.path.realpath(db):
            return _error(
                f"--import-sqlite {import_sqlite}: importing needs a postgresql:// --db (it is {db})", 2
            )
        import_sqlite = None  # the SQLite file is the store itself: nothing to move
    options: dict[str, Any] = {
        "import_sqlite": import_sqlite,
        "retention_s": retention_days * 86400.0,
        "telegram": bots,
        "telegram_webhook_secret": secret,
        "telegram_api_base": _api_base(),
        "ingress_token": ingress_token,
    }
    try:
        loop.run(serve(args.host, args.port, db, secrets, args.max_frame_bytes, metrics_port, **options))
    except StartupError as exc:
        print(f"hermes-relay: error: {exc}", file=sys.stderr)
        _exit_now_if_threads_linger(1)
        return 1
    return 0


def set_webhook_command(gateway_id: str, url: str, bots: dict[str, str], secret: str | None) -> int:
    """``telegram set-webhook``: ``setWebhook`` with ``<url>/telegram/<ID>``, the secret and
    ``allowed_updates: ["message"]``; one line; 0 on ok, 1 with Telegram's description, 2 for
    bad input."""
    token = bots.get(gateway_id)
    if token is None:
        return _error(f"--gateway {gateway_id!r} has no bot token; give --telegram {gateway_id}=BOT_TOKEN", 2)
    if secret is None:
        return _error("--telegram-webhook-secret (or RELAY_TELEGRAM_WEBHOOK_SECRET) is required", 2)
    if not url.startswith(("https://", "http://")):
        return _error(f"--url {url!r} is not an http(s) URL", 2)
    hook = f"{url.rstrip('/')}/telegram/{gateway_id}"

    async def run() -> tuple[bool, str]:
        async with aiohttp.ClientSession() as http:
            return await tg.set_webhook(http, _api_base(), token, hook, secret)

    ok, detail = asyncio.run(run())
    if not ok:
        return _error(f"setWebhook failed: {detail}", 1)
    print(f"webhook set: {hook}")
    return 0


def _exit_now_if_threads_linger(code: int) -> None:
    """Exit at once when a failed start left a non-daemon thread (an aiosqlite connection that
    failed while opening): the interpreter would otherwise wait for it forever."""
    lingering = [
        t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]
    if lingering:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
