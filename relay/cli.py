"""``hermes-relay``: run the reference connector (``serve``).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT); 2 for bad arguments (one line naming the bad
value, nothing written); 1 when the connector cannot start (port in use, database that cannot be
opened: one line naming the cause, within a second, never a half-started process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from aiohttp import web

from relay.connector.server import Connector
from relay.errors import ConfigError, StartupError
from relay.listen import bind_listener
from relay.protocol.framing import DEFAULT_MAX_FRAME_BYTES
from relay.protocol.token import validate_gateway_id


def parse_gateways(flags: Sequence[str], env_value: str | None) -> dict[str, str]:
    """Merge ``RELAY_GATEWAYS="id1=s1,id2=s2"`` and ``--gateway ID=SECRET`` flags (flag wins).

    Each item is split at its first ``=``. Raises ``ConfigError`` naming the item when it has no
    ``=``, an empty secret, or an id that is empty or contains ``:``.
    """
    out: dict[str, str] = {}

    def add(item: str, where: str) -> None:
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
        out[gid] = secret

    for item in (env_value or "").split(","):
        if item.strip():
            add(item, "RELAY_GATEWAYS")
    for item in flags:
        add(item, "--gateway")
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; expected 1-65535")
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
    s.add_argument("--db", default="relay.db", help="SQLite file for the durable buffer")
    s.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="ID=SECRET",
        help="a gateway allowed to connect (repeatable; also env RELAY_GATEWAYS)",
    )
    s.add_argument("--max-frame-bytes", type=_positive_int, default=DEFAULT_MAX_FRAME_BYTES)
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


async def open_connector(db: str, secrets: dict[str, str], max_frame_bytes: int) -> Connector:
    """``Connector.create`` with start-up errors as ``StartupError`` naming ``--db`` and why."""
    try:
        return await Connector.create(db, secrets=secrets, max_frame_bytes=max_frame_bytes)
    except (OSError, sqlite3.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(f"--db {db}: cannot open the connector database: {why}") from None


async def serve(host: str, port: int, db: str, secrets: dict[str, str], max_frame_bytes: int) -> None:
    """Run the connector until SIGTERM/SIGINT.

    The port is bound before the database opens, so a busy port fails at once. Raises
    ``StartupError`` (one line naming the cause) when the port or the database is unusable.
    """
    sock = bind_listener(host, port, "connector HTTP")
    try:
        connector = await open_connector(db, secrets, max_frame_bytes)
    except BaseException:
        sock.close()
        raise
    runner = web.AppRunner(connector.app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    bound = sock.getsockname()[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else port
    logging.getLogger("relay.connector").info(
        "hermes-relay serving on http://%s:%d (ws /relay, %d gateway(s))", host, bound, len(secrets)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await connector.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        secrets = parse_gateways(args.gateway, os.environ.get("RELAY_GATEWAYS"))
    except ConfigError as exc:
        print(f"hermes-relay: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.host, args.port, args.db, secrets, args.max_frame_bytes))
    except StartupError as exc:
        print(f"hermes-relay: error: {exc}", file=sys.stderr)
        _exit_now_if_threads_linger(1)
        return 1
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
