"""``hermes-sidecar``: ``run`` (the main job), ``dev`` (with the reference connector in-process)
and ``status``. Bad input exits 2 with one line naming the value and what is allowed.

The package: this module parses the command line and dispatches; ``run`` starts a sidecar and
serves it until a signal; ``dev`` adds the reference connector; ``cron``, ``kanban``,
``sessions`` and ``telemetry`` are the management commands. No submodule imports this one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from common import loop
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
        s.add_argument(
            "--metrics-port",
            type=_port,
            default=None,
            help="internal port serving /metrics (default $METRICS_PORT, else "
            + ("9091" if name == "run" else "the sidecar port + 2")
            + "; 0 = off)",
        )
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
    rl = sub.add_parser("reload", help="make the running sidecar re-read config.yaml (like SIGHUP)")
    rl.add_argument("--json", action="store_true")
    from gateway.cli import cron, kanban, sessions, telemetry

    cron.add_parsers(sub, _Parser)
    kanban.add_parsers(sub, _Parser)
    sessions.add_parsers(sub, _Parser)
    telemetry.add_parsers(sub, _Parser)
    return p


DEFAULT_METRICS_PORT = 9091


def metrics_port_of(args: argparse.Namespace, env: Mapping[str, str]) -> int | None:
    """The internal port for ``run``/``dev`` (SPEC 8.3): ``--metrics-port``, else
    ``$METRICS_PORT``, else 9091 (``run``) or the app port + 2 (``dev``); 0 = off -> None.
    Raises ``argparse.ArgumentTypeError`` for a bad ``$METRICS_PORT`` or, under ``dev``, an app
    port whose + 2 is past 65535."""
    value = args.metrics_port
    if value is None:
        text = env.get("METRICS_PORT", "").strip()
        if text:
            try:
                value = _port(text)
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"METRICS_PORT: {exc}") from None
        elif args.command == "dev":
            value = derived_port(args.port or 8080, 2, "--metrics-port")
        else:
            value = DEFAULT_METRICS_PORT
    return None if value == 0 else int(value)


def derived_port(port: int, offset: int, flag: str) -> int:
    """``port + offset`` (``dev``'s default connector and metrics ports). Raises
    ``argparse.ArgumentTypeError`` naming ``flag`` when that is past 65535: it would wrap to
    another port at bind time (65536 is 0, any free port) and be dialled as an invalid URL."""
    value = port + offset
    if value > 65535:
        raise argparse.ArgumentTypeError(f"--port {port} + {offset} is past 65535; pass {flag}")
    return value


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
    if args.command in ("run", "dev"):
        try:
            if args.command == "dev" and not args.relay_port and args.port:
                derived_port(args.port, 1, "--relay-port")  # run_dev's default connector port
            args.metrics_port = metrics_port_of(args, os.environ)
        except argparse.ArgumentTypeError as exc:
            print(f"hermes-sidecar: error: {exc}", file=sys.stderr)
            return 2
    if args.command == "status":
        return _status(args)
    if args.command == "reload":
        return _reload(args)
    if args.command in ("cron", "kanban", "sessions", "telemetry", "routing"):
        return _manage(args)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    if args.command == "dev":
        from gateway.cli.dev import run_dev

        code = loop.run(run_dev(args))
    else:
        from gateway.cli.run import _run

        code = loop.run(_run(args.host, args.port, metrics_port=args.metrics_port))
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


def _manage(args: argparse.Namespace) -> int:
    """Run a management command; ``Exit`` becomes its exit code and one stderr line."""
    from gateway.cli import cron, kanban, sessions, telemetry
    from gateway.mgmt import Exit

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    config = load_config()
    module = {"cron": cron, "kanban": kanban, "sessions": sessions}.get(args.command, telemetry)
    try:
        code: int = asyncio.run(module.run(args, config))
        return code
    except Exit as exc:
        print(f"hermes-sidecar: error: {exc}", file=sys.stderr)
        return exc.code


def _status(args: argparse.Namespace) -> int:
    """``hermes-sidecar status``: the running sidecar's ``/status`` (sent with the admin token
    from sidecar.json), as JSON or as a short operator view."""
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

    async def fetch() -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"http://127.0.0.1:{info['port']}/status",
                headers={"Authorization": f"Bearer {info['token']}"},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as r,
        ):
            return r.status, await r.json(content_type=None)

    try:
        code, doc = asyncio.run(fetch())
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        print(f"sidecar on port {info.get('port')} did not answer: {exc}", file=sys.stderr)
        return 1
    if code != 200 or not isinstance(doc, dict):
        print(f"sidecar on port {info.get('port')} answered {code}: {doc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc))
    else:
        print(format_status(doc))
    return 0


def _reload(args: argparse.Namespace) -> int:
    """``hermes-sidecar reload``: ``POST /admin/notify`` (re-plan and re-read the config);
    0 when the new config was taken, 1 when none runs or the config did not load."""
    from gateway.mgmt import call_sidecar

    config = load_config()
    answer = asyncio.run(call_sidecar(config, "/admin/notify", {}))
    if answer is None:
        doc: dict[str, Any] = {"error": f"no running sidecar answered ({config.home / 'sidecar.json'})"}
    elif answer[0] != 200 or not isinstance(answer[1], dict):
        doc = {"error": f"sidecar answered {answer[0]}: {answer[1]}"}
    else:
        doc = {"config_reloaded": bool(answer[1].get("config_reloaded"))}
        if not doc["config_reloaded"]:
            doc["error"] = "config did not load; the sidecar keeps the current one (see its log)"
    if args.json:
        print(json.dumps(doc))
    elif "error" in doc:
        print(f"hermes-sidecar: error: {doc['error']}", file=sys.stderr)
    else:
        print("config reloaded")
    return 1 if "error" in doc else 0


def format_status(doc: Mapping[str, Any]) -> str:
    """The readable ``status`` view: state, idle clock (only while live), cooldown, tasks,
    next job, drift and substitution alerts, relay."""
    lines: list[str] = []
    state = doc.get("state")
    lines.append(f"state        {state}  (armed: {doc.get('armed')})")
    if doc.get("arm_blockers"):
        lines.append("blockers     " + "; ".join(doc["arm_blockers"]))
    if state == "dormant":
        lines.append(f"idle         dormant since {doc.get('dormant_since') or 'unknown'}")
    elif state == "draining":
        lines.append("idle         draining (going dormant)")
    else:
        lines.append(f"idle         {doc.get('idle_for_s', 0):.0f} s of {doc.get('idle_timeout_s', 0):.0f} s")
    lines.append(f"last inbound {doc.get('last_inbound_at') or 'none yet'}")
    lines.append(f"cooldown     {'until ' + doc['cooldown_until'] if doc.get('cooldown_until') else 'none'}")
    lines.append(f"running      {doc.get('running_turns', 0)} turn(s)")
    tasks = doc.get("tasks") or {}
    if tasks:
        lines.append("tasks        " + ", ".join(f"{k} {v}" for k, v in tasks.items()))
    nxt = doc.get("next_job_due_at")
    late = " (may run late: the connector cannot wake at a time)" if doc.get("jobs_may_run_late") else ""
    lines.append(f"next job     {nxt or 'none'}{late}")
    drift = doc.get("drift_alerts") or []
    lines.append(f"drift        {len(drift)} open alert(s)")
    for d in drift:
        lines.append(f"  job {d.get('job_id')} since {d.get('opened_at')}: {d.get('detail')}")
    subs = doc.get("substitution_alerts") or []
    lines.append(f"substitution {len(subs)} open alert(s)")
    for a in subs:
        lines.append(
            f"  asked {a.get('asked')} on {a.get('provider')}, answered {a.get('answered')} "
            f"({a.get('turns')} turn(s) since {a.get('opened_at')})"
        )
    relay = doc.get("relay") or {}
    lines.append(
        f"relay        connected={relay.get('connected')} "
        f"dials={relay.get('dial_attempts')} last_close={relay.get('last_close_code')}"
    )
    return "\n".join(lines)
