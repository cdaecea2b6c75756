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
    runners = [web.AppRunner(connector.app, handle_signals=False, access_log=None)]
    if metrics_port:
        runners.append(web.AppRunner(metrics_app(connector), handle_signals=False, access_log=None))
    for runner, sock in zip(runners, socks, strict=True):
        await runner.setup()
        await web.SockSite(runner, sock).start()
    sock = socks[0]
    bound = sock.getsockname()[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else port
    logging.getLogger("relay.connector").info(
        "hermes-relay serving on http://%s:%d (ws /relay, %d gateway(s), store %s)",
        host,
        bound,
        len(secrets),
        redact_url(db),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await connector.close()
