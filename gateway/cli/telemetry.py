"""``hermes-sidecar telemetry ema`` and ``hermes-sidecar routing report`` (read-only)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from gateway.config import Config
from gateway.cron.drift import current_axes
from gateway.mgmt import Exit, emit, open_db
from gateway.telemetry.ema import query_skill_ema
from gateway.telemetry.learned import learned_hour_rates
from gateway.telemetry.routing import RoutingSettings, get_routing_report, routing_header

JSON_HELP = "print one JSON document instead of text"


def _window(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"window {text!r} is not a whole number of days (>= 1)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"window {text!r} must be >= 1 day")
    return value


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"alpha {text!r} is not a number in (0, 1)") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"alpha {text!r} must be in (0, 1) (exclusive)")
    return value


def add_parsers(sub: Any, parser_class: Any) -> None:
    tel = sub.add_parser("telemetry", help="skill telemetry")
    tsub = tel.add_subparsers(
        dest="telemetry_cmd", required=True, parser_class=parser_class, help="which report"
    )
    ema = tsub.add_parser("ema", help="EMA success rate, duration and cost per skill and model")
    ema.add_argument(
        "--window-days", type=_window, default=14, help="days of history to weigh (>= 1, default 14)"
    )
    ema.add_argument(
        "--alpha", type=_alpha, default=0.3, help="EMA weight of the newest day, in (0, 1) (default 0.3)"
    )
    ema.add_argument("--json", action="store_true", help=JSON_HELP)
    rt = sub.add_parser("routing", help="time-aware routing")
    rsub = rt.add_subparsers(
        dest="routing_cmd", required=True, parser_class=parser_class, help="which report"
    )
    rep = rsub.add_parser("report", help="24-hour forecast of the cron model per hour")
    rep.add_argument("--json", action="store_true", help=JSON_HELP)


async def run(args: argparse.Namespace, config: Config) -> int:
    if not config.state_db.exists():
        rows: list[dict[str, Any]] = []
        learned: dict[int, tuple[int, int]] = {}
    else:
        db = await open_db(config)
        try:
            if args.command == "telemetry":
                rows = await query_skill_ema(db, args.window_days, args.alpha)
            learned = await learned_hour_rates(db, time.time())
        finally:
            await db.close()
    if args.command == "telemetry":
        text = (
            "\n".join(
                f"{r['skill_name']:20} {r['model'] or '-':24} n={r['sample_count']:<5} "
                f"success={_pct(r['ema_success_rate'])} dur={_num(r['ema_duration_s'])}s "
                f"cost/call=${_num(r['ema_cost_per_call'], 4)} total=${r['total_cost_usd']:.4f}"
                for r in rows
            )
            or "no skill invocations in the window"
        )
        emit(args.json, rows, text)
        return 0
    if args.command == "routing":
        settings = RoutingSettings.from_env(
            strong_model=config.routing_strong_model,
            strong_provider=config.routing_strong_provider,
            cheap_model=config.routing_cheap_model,
            threshold_pct=config.routing_error_threshold_pct,
        )
        base = current_axes(config, None).model or "<base>"
        report = get_routing_report(settings, learned, enabled=config.routing_enabled, base_model=base)
        lines = [routing_header(config.routing_enabled, settings, base)]
        lines += [
            f"{r['hour']}  {r['error_rate']:5.2f}%  {'off ' if r['off_hours'] else 'day '} "
            f"{r['source']:7}  {r['model']}"
            for r in report
        ]
        emit(args.json, report, "\n".join(lines))
        return 0
    raise Exit(2, f"unknown command {args.command!r}")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
