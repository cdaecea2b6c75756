"""``hermes-sidecar``: ``run`` (the main job), ``dev`` (with the reference connector in-process)
and ``status``. Bad input exits 2 with one line naming the value and what is allowed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp

from gateway.config import load_config

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UsageError(Exception):
    """Bad CLI input: exit 2 with this one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        raise UsageError(message)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not an integer (0-65535)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {text!r} is out of range (0-65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hermes-sidecar", description="Scale-to-zero sidecar for an agent gateway")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    default_port = os.environ.get("PORT", "8080")
    for name, help_ in (
        ("run", "run the sidecar (the main job)"),
        ("dev", "run the sidecar with the reference connector in-process"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=_port, default=default_port)
        s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        if name == "dev":
            s.add_argument(
                "--relay-port", type=_port, default=None, help="connector port (default: sidecar port + 1)"
            )
            s.add_argument(
                "--idle-timeout-minutes",
                type=float,
                default=None,
                help="idle timeout for the demo (default 0.5)",
            )
    st = sub.add_parser("status", help="print the running sidecar's /status")
    st.add_argument("--json", action="store_true")
    from gateway import cli_cron, cli_kanban, cli_sessions, cli_telemetry

    cli_cron.add_parsers(sub, _Parser)
    cli_kanban.add_parsers(sub, _Parser)
    cli_sessions.add_parsers(sub, _Parser)
    cli_telemetry.add_parsers(sub, _Parser)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if isinstance(args.port if hasattr(args, "port") else 0, str):
            args.port = _port(args.port)
    except UsageError as exc:
        print(f"hermes-sidecar: error: {exc}", file=sys.stderr)
        return 2
    except argparse.ArgumentTypeError as exc:
        print(f"hermes-sidecar: error: PORT: {exc}", file=sys.stderr)
        return 2
    if args.command == "status":
        return _status(args)
    if args.command in ("cron", "kanban", "sessions", "telemetry", "routing"):
        return _manage(args)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    if args.command == "dev":
        from gateway.dev import run_dev

        code = asyncio.run(run_dev(args))
    else:
        code = asyncio.run(_run(args.host, args.port))
    if code != 0:
        _hard_exit(code)
    return code


def _hard_exit(code: int) -> None:
    """Flush and leave with ``code`` at once: a failed start may leave a non-daemon thread
    (aiosqlite's) that would otherwise keep the interpreter from exiting (SPEC 8.1)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def startup_failed(exc: BaseException, secrets: Iterable[str] = ()) -> int:
    """Print ``hermes-sidecar: error: <cause>`` as one stderr line (redacted of ``secrets``)
    and return the exit code 1. The cause is the message of a ``SidecarError`` (e.g.
    ``StartupError``), else ``<ExceptionType>: <message>``."""
    from gateway.agent.redact import redact
    from relay.errors import SidecarError

    cause = str(exc) if isinstance(exc, SidecarError) else f"{type(exc).__name__}: {exc}"
    cause = " ".join(redact(cause, secrets).split()) or type(exc).__name__
    print(f"hermes-sidecar: error: {cause}", file=sys.stderr, flush=True)
    return 1


async def _run(host: str, port: int, env_overrides: dict[str, str] | None = None) -> int:
    """``hermes-sidecar run``: 0 after a graceful stop, 1 (one stderr line) when start-up fails."""
    from gateway.runtime.sidecar import Sidecar

    env = {**os.environ, **(env_overrides or {})}
    try:
        config = load_config(env=env, strict=True)
        sidecar = Sidecar(config, host=host, port=port, env=env)
    except Exception as exc:  # a config file that cannot be used, or a sidecar that cannot be built
        return startup_failed(exc, _secrets(None, env))
    return await run_until_signal(sidecar)


def _secrets(config: Any, env: Any) -> list[str]:
    """Secret values to keep out of a start-up error line (best effort, never raises)."""
    from gateway.agent.redact import configured_secrets

    values = [env.get(k) for k in ("GATEWAY_RELAY_SECRET", "HERMES_WAKE_SECRET")] if env else []
    if config is not None:
        with contextlib.suppress(Exception):
            values += configured_secrets(config, env)
    return [v for v in values if v]


START_FAILED_SHUTDOWN_S = 3.0
"""How long a failed start may spend closing what it opened before the process exits."""


async def run_until_signal(sidecar: Any, on_started: Any = None) -> int:
    """Start ``sidecar``, serve until SIGTERM/SIGINT, shut down gracefully; return 0.

    When ``sidecar.start()`` raises (a port in use, an unwritable home, ...): one line
    ``hermes-sidecar: error: <cause>`` on stderr, a best-effort ``shutdown()`` bounded by 3 s
    (every error suppressed), and 1 is returned; nothing is left serving.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, sidecar.request_stop)
    try:
        await sidecar.start()
    except Exception as exc:
        code = startup_failed(exc, _secrets(getattr(sidecar, "config", None), getattr(sidecar, "env", None)))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sidecar.shutdown(), START_FAILED_SHUTDOWN_S)
        return code
    if on_started is not None:
        await on_started(sidecar)
    await sidecar.serve_forever()
    logging.getLogger("gateway.sidecar").info("signal received: shutting down")
    await sidecar.shutdown()
    return 0


def _manage(args: argparse.Namespace) -> int:
    """Run a management command; ``Exit`` becomes its exit code and one stderr line."""
    from gateway import cli_cron, cli_kanban, cli_sessions, cli_telemetry
    from gateway.mgmt import Exit

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    config = load_config()
    module = {"cron": cli_cron, "kanban": cli_kanban, "sessions": cli_sessions}.get(
        args.command, cli_telemetry
    )
    try:
        code: int = asyncio.run(module.run(args, config))
        return code
    except Exit as exc:
        print(f"hermes-sidecar: error: {exc}", file=sys.stderr)
        return exc.code


def _status(args: argparse.Namespace) -> int:
    from gateway.mgmt import sidecar_info

    config = load_config()
    info = sidecar_info(config)
    if info is None:
        msg = f"no running sidecar: {config.home / 'sidecar.json'} not found"
        if args.json:
            print(json.dumps({"error": msg}))
        else:
            print(msg, file=sys.stderr)
        return 1

    async def fetch() -> Any:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{info['port']}/status", timeout=aiohttp.ClientTimeout(total=5)) as r,
        ):
            return await r.json()

    try:
        doc = asyncio.run(fetch())
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"sidecar on port {info.get('port')} did not answer: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc))
    else:
        relay = doc.get("relay", {})
        print(f"state        {doc['state']}  (armed: {doc['armed']})")
        if doc.get("arm_blockers"):
            print("blockers     " + "; ".join(doc["arm_blockers"]))
        print(f"idle         {doc['idle_for_s']:.0f} s of {doc['idle_timeout_s']:.0f} s")
        print(f"last inbound {doc['last_inbound_at']}")
        print(
            f"relay        connected={relay.get('connected')} "
            f"dials={relay.get('dial_attempts')} last_close={relay.get('last_close_code')}"
        )
        print(f"running      {doc['running_turns']} turn(s)")
    return 0
