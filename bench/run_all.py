"""Run every benchmark in ``bench/`` within a time budget and print one table.

Each script runs as ``python -m bench.<name> --json [--quick]`` in its own process; its rows
(figure, ours, baseline, ratio, goal, met) are gathered into one table, or one JSON list with
``--json``. A script that fails or overruns its share of the budget is reported as a row with
``met: false`` and the reason, never silently dropped. Full run: at most 10 minutes on 2 cores;
``--quick``: about a minute.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench.common import emit_rows

SCRIPTS = (
    "relay_throughput",
    "wake_latency",
    "scheduler",
    "footprint",
    "telemetry",
    "turn_commit",
    "history",
    "overview",
    "pg_scaleout",
)


def run_one(name: str, quick: bool, timeout_s: float) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", f"bench.{name}", "--json"] + (["--quick"] if quick else [])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return [
            {
                "figure": f"{name}: overran {timeout_s:.0f} s",
                "ours": None,
                "baseline": None,
                "ratio": None,
                "goal": "finish",
                "met": False,
            }
        ]
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [
            {
                "figure": f"{name}: failed ({tail[:60]})",
                "ours": None,
                "baseline": None,
                "ratio": None,
                "goal": "finish",
                "met": False,
            }
        ]
    start = done.stdout.find("[")
    return list(json.loads(done.stdout[start:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run")
    args = p.parse_args(argv)
    budget = args.budget or (90.0 if args.quick else 600.0)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(SCRIPTS):
        left = budget - (time.monotonic() - started)
        share = left / (len(SCRIPTS) - i)
        rows += run_one(name, args.quick, max(5.0, share))
    emit_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
