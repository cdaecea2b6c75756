"""What every benchmark script shares: percentiles and the result table (text or JSON)."""

from __future__ import annotations

import json
import sys
from typing import Any


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def emit_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    """Print rows with keys figure, ours, baseline, ratio, goal, met as a table or JSON list."""
    if as_json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return
    width = max(len(r["figure"]) for r in rows)
    for r in rows:
        print(
            f"{r['figure']:{width}}  ours {r['ours']!s:>9}  baseline {r['baseline']!s:>9}  "
            f"ratio {r['ratio']!s:>7}  goal {r['goal']:24} {'met' if r['met'] else 'NOT met'}"
        )
