"""``python -m sim --fuzz [--examples N] [--json]``: hypothesis at the parsers (issue #13). Holds
``TARGETS`` (one ``fuzz_<name>(examples) -> TargetResult`` per parser: ``frames``, ``ingress``,
``config``, ``cli``) and ``fuzz_all``, which runs them and prints the results; each parser must
answer arbitrary and near-valid input with its documented result or error, never another
exception, and a failure is reported with its shrunk falsifying input (see ``harness``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from sim.fuzz.cli import fuzz_cli
from sim.fuzz.config import fuzz_config
from sim.fuzz.frames import fuzz_frame_decoder
from sim.fuzz.harness import PropertyFailed, TargetResult, require, run_target, show
from sim.fuzz.ingress import fuzz_ingress_body, fuzz_telegram_update

__all__ = [
    "TARGETS",
    "PropertyFailed",
    "TargetResult",
    "fuzz_all",
    "fuzz_cli",
    "fuzz_config",
    "fuzz_frame_decoder",
    "fuzz_ingress_body",
    "fuzz_telegram_update",
    "require",
    "run_target",
    "show",
]

TARGETS: tuple[Callable[[int], TargetResult], ...] = (
    fuzz_frame_decoder,
    fuzz_ingress_body,
    fuzz_telegram_update,
    fuzz_config,
    fuzz_cli,
)


def fuzz_all(examples: int, *, as_json: bool) -> int:
    """Run every target with ``examples`` inputs each; print one line per target (name,
    examples, seconds, held/FAILED with the falsifying example and exception) or, with
    ``as_json``, one JSON document. Returns the exit code: 0 when every property held, else 1."""
    started = time.perf_counter()
    results: list[TargetResult] = []
    for target in TARGETS:
        result = target(examples)
        results.append(result)
        if not as_json:
            _print_result(result)
    failed = [r.name for r in results if not r.ok]
    wall = round(time.perf_counter() - started, 1)
    if as_json:
        doc: Mapping[str, Any] = {
            "examples_per_target": examples,
            "targets": [asdict(r) for r in results],
            "failed": failed,
            "wall_s": wall,
        }
        print(json.dumps(doc, indent=2))
    else:
        total = sum(r.examples for r in results)
        verdict = "all held" if not failed else "FAILED: " + ", ".join(failed)
        print(f"{len(results)} target(s), {total} examples in {wall} s: {verdict}")
    return 1 if failed else 0


def _print_result(r: TargetResult) -> None:
    status = "held" if r.ok else "FAILED"
    print(f"{r.name}: {r.examples} examples in {r.seconds} s: {status}", flush=True)
    if not r.ok:
        print(f"  falsifying example: {r.falsifying}")
        print(f"  exception: {r.error}", flush=True)
