"""The command line of ``python -m sim`` (see ``sim/__main__.py``): seeds, workers, the tally."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

SEED_WALL_LIMIT_S = 120.0
"""Real seconds one schedule may take before the harness calls it hung (a hidden real wait)."""
TRACE_TAIL = 120


def _whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``; the error names the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be {minimum} or more")
        return value

    return parse


_positive, _seed = _whole(1), _whole(0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sim",
        description="Run seeded fault schedules of the whole loop and check that every accepted "
        "message is answered exactly once (SPEC 8.4).",
    )
    p.add_argument("--seeds", type=_positive, default=100, help="schedules to run: seeds 0..N-1 (100)")
    p.add_argument("--seed", type=_seed, help="run this one seed and print its trace")
    p.add_argument("--first", type=_seed, default=0, help="the first seed of --seeds (0)")
    p.add_argument("--json", action="store_true", help="print the tally as one JSON document")
    p.add_argument("--workers", type=_positive, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--fuzz", action="store_true", help="fuzz the parsers (hypothesis)")
    p.add_argument("--examples", type=_positive, default=10_000, help="--fuzz: examples per parser (10000)")
    return p


def _quiet_logs() -> None:
    root = logging.getLogger()
    root.handlers[:] = [logging.NullHandler()]
    root.setLevel(logging.ERROR)


class _Frozen(BaseException):
    """Raised by the watchdog inside a loop that stopped yielding."""


def one(seed: int, keep_trace: bool = False) -> dict[str, Any]:
    """Run ``seed`` in a fresh event loop; its verdict as a plain dict (the trace only when it
    failed). Two real-time bounds of the harness's own: a schedule that takes more than
    ``SEED_WALL_LIMIT_S`` is "hung"; a loop that never yields (so that bound cannot fire) is
    interrupted by an alarm 5 s later and reported "frozen" with where it spins."""
    from sim.run import run_seed
    from sim.verdict import Verdict

    _quiet_logs()
    started = time.monotonic()
    frozen: list[str] = []

    def watchdog(_signum: int, frame: Any) -> None:
        stack = traceback.extract_stack(frame)[-4:]
        frozen.append(" > ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in stack))
        raise _Frozen

    async def bounded() -> Verdict:
        return await asyncio.wait_for(run_seed(seed), SEED_WALL_LIMIT_S)

    previous = signal.signal(signal.SIGALRM, watchdog)
    signal.setitimer(signal.ITIMER_REAL, SEED_WALL_LIMIT_S + 5.0)
    try:
        v = asyncio.run(bounded())
    except TimeoutError:
        v = Verdict(seed=seed, violations=[f"hung: no verdict within {SEED_WALL_LIMIT_S:.0f} real seconds"])
    except _Frozen:
        v = Verdict(seed=seed, violations=[f"frozen: the event loop stopped yielding at {frozen[0]}"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    out: dict[str, Any] = {
        "seed": seed,
        "faults": dict(v.faults),
        "accepted": v.accepted,
        "answered": v.answered,
        "lost": v.lost,
        "duplicated": v.duplicated,
        "stranded": v.stranded,
        "violations": v.violations,
        "virtual_s": round(v.virtual_s, 3),
        "wall_s": round(time.monotonic() - started, 3),
    }
    if keep_trace or not v.ok:
        out["trace"] = v.trace
    return out


def tally(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The SPEC 8.4 document of a batch of verdicts."""
    faults: Counter[str] = Counter()
    for r in results:
        faults.update(r["faults"])
    failing = [r for r in results if r["lost"] or r["duplicated"] or r["stranded"] or r["violations"]]
    return {
        "schedules": len(results),
        "faults": dict(sorted(faults.items())),
        "accepted": sum(r["accepted"] for r in results),
        "answered": sum(r["answered"] for r in results),
        "lost": sum(len(r["lost"]) for r in results),
        "duplicated": sum(len(r["duplicated"]) for r in results),
        "stranded": sum(len(r["stranded"]) for r in results),
        "violations": [
            {
                "seed": r["seed"],
                "reproduce": f"python -m sim --seed {r['seed']}",
                "lost": r["lost"],
                "duplicated": r["duplicated"],
                "stranded": r["stranded"],
                "violations": r["violations"],
            }
            for r in failing
        ],
        "virtual_hours": round(sum(r["virtual_s"] for r in results) / 3600.0, 1),
    }


def _print_failure(r: dict[str, Any], full: bool) -> None:
    print(f"seed {r['seed']} FAILED: reproduce with: python -m sim --seed {r['seed']}")
    for key in ("lost", "duplicated", "stranded", "violations"):
        for line in r[key]:
            print(f"  {key}: {line}")
    trace = r.get("trace", [])
    shown = trace if full else trace[-TRACE_TAIL:]
    if len(shown) < len(trace):
        print(f"  trace (last {len(shown)} of {len(trace)} events; --seed {r['seed']} prints all):")
    else:
        print("  trace:")
    for line in shown:
        print("   ", line)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":
        # String hashing is part of a schedule (set order): the same seed, the same run.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "sim", *(sys.argv[1:] if argv is None else argv)])
    if args.fuzz:
        from sim.fuzz import fuzz_all

        return fuzz_all(args.examples, as_json=args.json)
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    started = time.monotonic()
    if len(seeds) == 1 or args.workers == 1:
        results = [one(s, keep_trace=args.seed is not None) for s in seeds]
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(one, seeds, chunksize=4))
    doc = tally(results)
    doc["wall_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for r in results:
            if r["lost"] or r["duplicated"] or r["stranded"] or r["violations"]:
                _print_failure(r, full=args.seed is not None)
        if args.seed is not None and not doc["violations"]:
            for line in results[0].get("trace", []):
                print("   ", line)
        took = "" if args.seed is not None else f" in {doc['wall_s']} s"  # --seed: same bytes each run
        print(
            f"{doc['schedules']} schedule(s), {doc['virtual_hours']} virtual hours{took}:"
            f" accepted {doc['accepted']}, answered {doc['answered']}, lost {doc['lost']},"
            f" duplicated {doc['duplicated']}, stranded {doc['stranded']},"
            f" failing seeds {len(doc['violations'])}"
        )
        print("faults: " + ", ".join(f"{k} {v}" for k, v in doc["faults"].items()))
    return 1 if doc["violations"] else 0
