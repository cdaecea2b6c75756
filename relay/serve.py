"""The connector process: bind its ports, open its store, serve until SIGTERM/SIGINT
(``hermes-relay serve``; ``relay/cli.py`` parses the flags and environment)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sqlite3
from typing import Any

from aiohttp import web

from common.errors import StartupError
from common.listen import bind_listener
from relay.connector.metrics import metrics_app
from relay.connector.server import Connector
from relay.connector.store_api import StoreOpenError, redact_url


async def open_connector(db: str, secrets: dict[str, str], max_frame_bytes: int, **options: Any) -> Connector:
    """``Connector.create`` with start-up errors as ``StartupError`` naming ``--db`` (a URL's
    password redacted) and why.
    ``options`` are further ``Connector`` keywords (Telegram, ingress token)."""
    try:
        return await Connector.create(db, secrets=secrets, max_frame_bytes=max_frame_bytes, **options)
    except StoreOpenError as exc:  # PostgreSQL: the message holds the redacted URL already
        raise StartupError(f"--db {exc}") from None
    except (OSError, sqlite3.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(f"--db {db}: cannot open the connector database: {why}") from None


async def serve(
    host: str,
    port: int,
    db: str,
    secrets: dict[str, str],
    max_frame_bytes: int,
    metrics_port: int = 0,
    **options: Any,
) -> None:
    """Run the connector until SIGTERM/SIGINT; with ``metrics_port`` (0: none) also
    ``GET /metrics`` there (``relay.connector.metrics``).

    The ports are bound before the database opens, so a busy port fails at once. Raises
    ``StartupError`` (one line naming the cause) when a port or the database is unusable.
    """
    socks = [bind_listener(host, port, "connector HTTP")]
    try:
        if metrics_port:
            socks.append(bind_listener(host, metrics_port, "connector metrics"))
        connector = await open_connector(db, secrets, max_frame_bytes, **options)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    apps = [connector.app] + ([metrics_app(connector)] if metrics_port else [])
    started: list[web.AppRunner] = []
    try:
        for app, sock in zip(apps, socks, strict=True):
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            started.append(runner)
            await web.SockSite(runner, sock).start()
        shown = f"[{host}]" if ":" in host else host
        logging.getLogger("relay.connector").info(
            "hermes-relay serving on http://%s:%d (ws /relay, %d gateway(s), store %s%s)",
            shown,
            _bound(socks[0], port),
            len(secrets),
            redact_url(db),
            f", metrics on port {_bound(socks[1], metrics_port)}" if metrics_port else "",
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for runner in started:
            await runner.cleanup()
        for sock in socks:
            sock.close()  # already closed by its site, or never served
        await connector.close()


def _bound(sock: socket.socket, asked: int) -> int:
    """The port ``sock`` listens on (``asked`` for a socket without one)."""
    return int(sock.getsockname()[1]) if sock.family in (socket.AF_INET, socket.AF_INET6) else asked
