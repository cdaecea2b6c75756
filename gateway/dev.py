"""``hermes-sidecar dev``: the reference connector and the sidecar in one process.

Scale-to-zero is on with a short idle timeout (30 s unless ``--idle-timeout-minutes`` or
config says otherwise), the connector listens on the sidecar port + 1 in dev mode (no
gateway secrets), and its database lives in ``$HERMES_HOME/relay.db``.
"""

from __future__ import annotations

import argparse
import logging
import os

from aiohttp import web

from gateway.cli import run_until_signal
from gateway.config import load_config
from relay.connector.server import Connector

log = logging.getLogger("gateway.dev")


async def run_dev(args: argparse.Namespace) -> int:
    relay_port = args.relay_port or (args.port + 1 if args.port else 8081)
    env = dict(os.environ)
    env.setdefault("HERMES_SCALE_TO_ZERO", "1")
    env["GATEWAY_RELAY_URL"] = f"http://127.0.0.1:{relay_port}"
    env.setdefault("GATEWAY_RELAY_WAKE_URL", f"http://127.0.0.1:{args.port}/wake")
    config = load_config(env=env)
    if args.idle_timeout_minutes is not None:
        config.scale_to_zero.idle_timeout_s = max(0.001, args.idle_timeout_minutes) * 60
    elif not (config.home / "config.yaml").exists():
        config.scale_to_zero.idle_timeout_s = 30.0
        config.scale_to_zero.cooldown_s = 10.0
    config.home.mkdir(parents=True, exist_ok=True)
    connector = await Connector.create(str(config.home / "relay.db"))
    runner = web.AppRunner(connector.app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", relay_port).start()

    from gateway.runtime.sidecar import Sidecar

    sidecar = Sidecar(config, host=args.host, port=args.port, env=env)

    async def banner(sc: Sidecar) -> None:
        base = f"http://127.0.0.1:{sc.port}"
        relay = f"http://127.0.0.1:{relay_port}"
        log.info("dev loop ready. Try:\n"
                 "  curl -s %s/status\n"
                 "  curl -s -XPOST %s/ingress/relay -d '{\"chat_id\":1,\"user_id\":1,"
                 "\"message_id\":1,\"text\":\"hi\"}'\n"
                 "  curl -s %s/outbox\n"
                 "idle timeout %.0f s: watch /status go live -> dormant; post again to wake it.",
                 base, relay, relay, sc.config.scale_to_zero.idle_timeout_s)

    try:
        return await run_until_signal(sidecar, on_started=banner)
    finally:
        await runner.cleanup()
        await connector.close()
