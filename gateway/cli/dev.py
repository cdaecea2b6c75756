"""``hermes-sidecar dev``: the reference connector and the sidecar in one process.

Scale-to-zero is on with a short idle timeout (30 s unless ``--idle-timeout-minutes`` or
config says otherwise), the connector listens on the sidecar port + 1 in dev mode (no
gateway secrets), and its database lives in ``$HERMES_HOME/relay.db``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from aiohttp import web

from common.errors import StartupError
from common.listen import bind_listener, prepare_home
from gateway.agent.redact import configured_secrets
from gateway.cli.run import run_until_signal, startup_failed
from gateway.config import Config, load_config
from relay.connector.server import Connector

log = logging.getLogger("gateway.dev")


async def run_dev(args: argparse.Namespace) -> int:
    """Serve the connector on ``--relay-port`` (default sidecar port + 1) and run the sidecar
    against it until SIGTERM/SIGINT; 0 after a graceful stop.

    Start-up fails fast (SPEC 8.1) with one ``hermes-sidecar: error: <cause>`` line and 1: the
    config file cannot be used, ``$HERMES_HOME`` cannot be created or written, or the
    connector's or the sidecar's port is in use.
    """
    relay_port = args.relay_port or (args.port + 1 if args.port else 8081)
    env = dict(os.environ)
    env.setdefault("HERMES_SCALE_TO_ZERO", "1")
    env["GATEWAY_RELAY_URL"] = f"http://127.0.0.1:{relay_port}"
    env.setdefault("GATEWAY_RELAY_WAKE_URL", f"http://127.0.0.1:{args.port}/wake")

    def load() -> Config:
        """config.yaml + env with the demo overrides; also what a reload (SIGHUP) reads."""
        config = load_config(env=env, strict=True)
        if args.idle_timeout_minutes is not None:
            config.scale_to_zero.idle_timeout_s = max(0.001, args.idle_timeout_minutes) * 60
        elif not (config.home / "config.yaml").exists():
            config.scale_to_zero.idle_timeout_s = 30.0
            config.scale_to_zero.cooldown_s = 10.0
        return config

    try:
        config = load()
        prepare_home(config.home)
        listener = bind_listener("127.0.0.1", relay_port, "dev connector")
    except StartupError as exc:
        return startup_failed(exc)
    try:
        connector = await Connector.create(str(config.home / "relay.db"))
    except Exception as exc:  # the connector's database cannot be opened
        listener.close()
        return startup_failed(exc, configured_secrets(config, env))
    runner = web.AppRunner(connector.app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
        await web.SockSite(runner, listener).start()
    except Exception as exc:
        listener.close()
        with contextlib.suppress(Exception):
            await runner.cleanup()
        with contextlib.suppress(Exception):
            await connector.close()
        return startup_failed(exc, configured_secrets(config, env))

    from gateway.runtime.sidecar import Sidecar

    async def banner(sc: Sidecar) -> None:
        base = f"http://127.0.0.1:{sc.port}"
        relay = f"http://127.0.0.1:{relay_port}"
        log.info(
            "dev loop ready. Try:\n"
            "  curl -s %s/status\n"
            '  curl -s -XPOST %s/ingress/relay -d \'{"chat_id":1,"user_id":1,'
            '"message_id":1,"text":"hi"}\'\n'
            "  curl -s %s/outbox\n"
            "  curl -s %s\n"
            "idle timeout %.0f s: watch /status go live -> dormant; post again to wake it.",
            base,
            relay,
            relay,
            f"http://127.0.0.1:{sc.metrics_port}/metrics" if sc.metrics_port is not None else "(metrics off)",
            sc.config.scale_to_zero.idle_timeout_s,
        )

    try:
        try:
            sidecar = Sidecar(
                config,
                host=args.host,
                port=args.port,
                env=env,
                metrics_port=getattr(args, "metrics_port", None),
                loader=load,
            )
        except Exception as exc:
            return startup_failed(exc, configured_secrets(config, env))
        return await run_until_signal(sidecar, on_started=banner)
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        with contextlib.suppress(Exception):
            await connector.close()
