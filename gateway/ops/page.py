"""The operator page (SPEC 8.5): a view model over the overview document, and its template.

``page_context(overview)`` turns the ``/api/overview`` document into what
``templates/overview.html`` draws, so the page shows exactly the JSON twin's data. Charts are
inline SVG in a 1000-unit-wide ``viewBox`` (scaled to the screen, readable on a phone); the
page has no script, no external request (its Content-Security-Policy forbids them) and a
``data:`` favicon so the browser asks for nothing else.

Timeline: one band per watcher state over the last 24 hours. The first band starts at the
window's start in ``state_before`` (else the first row's ``from``, else the current state);
each watcher transition starts the next band in its ``to`` state; the last band ends now.
``stopped`` bands are the time the process was down (recorded at shutdown and start). Wake
markers sit at each wake's start with its latency; relay ``backoff``/``revoked``/``closed``
rows are red ticks under the strip.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from common.timefmt import parse_rfc3339

WIDTH = 1000.0
WATCHER_STATES = ("live", "draining", "dormant", "stopped")
OUTCOMES = ("succeeded", "failed", "blocked_drift", "blocked_budget", "missed", "skipped_overlap", "running")
MAX_WAKE_LABELS = 12
MAX_BANDS = 400
"""Above this many bands, bands narrower than ``MIN_BAND`` units (about 86 s of 24 h, under a
pixel on most screens) are drawn as part of the band before them; the JSON keeps every row."""
MIN_BAND = 1.0
WAKE_ROWS = 20
"""The wakes table lists the newest 20; ``/api/overview`` has them all."""


if TYPE_CHECKING:
    import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    """The page's Jinja2 environment (the package's templates, HTML autoescaped), made on the
    first page request: Jinja2 is imported only then, so a sidecar nobody looks at never
    holds it (1.7 MB of its idle RSS, issue #16)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.ops", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(usd=usd, ms=ms)
    return env


def render_page(doc: dict[str, Any]) -> str:
    """The operator page's HTML for the overview document ``doc``."""
    return environment().get_template("overview.html").render(page_context(doc))


def usd(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"${v:.{digits}f}"


def ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms"


def _watcher_state(state: str) -> str:
    """The sidecar state as a watcher state (``cron-only`` and ``revoked`` are live)."""
    return state if state in WATCHER_STATES else "live"


def timeline(doc: dict[str, Any]) -> dict[str, Any]:
    start = parse_rfc3339(doc["window"]["start"])
    end = parse_rfc3339(doc["window"]["end"])
    span = max(end - start, 1e-9)

    def x(ts: float) -> float:
        return round(min(max((ts - start) / span, 0.0), 1.0) * WIDTH, 2)

    rows = [t for t in doc["transitions"] if t["kind"] == "watcher"]
    first = doc["state_before"] or (rows[0]["from"] if rows else _watcher_state(doc["state"]))
    bands: list[dict[str, Any]] = []
    cur_state, cur_at = first, start
    for t in rows:
        at = parse_rfc3339(t["at"])
        bands.append(_band(cur_state, cur_at, at, x))
        cur_state, cur_at = t["to"], at
    bands.append(_band(cur_state, cur_at, end, x))
    merged = 0
    if len(bands) > MAX_BANDS:
        kept = [bands[0]]
        for b in bands[1:]:
            if b["width"] < MIN_BAND:
                kept[-1]["width"] = round(b["x"] + b["width"] - kept[-1]["x"], 2)
                merged += 1
            else:
                kept.append(b)
        bands = kept
    wakes = doc["wakes"]
    markers = [
        {
            "x": x(parse_rfc3339(w["at"])),
            "at": w["at"],
            "trigger": w["trigger"],
            "latency": ms(w["latency_ms"]),
            "ended_by": w["ended_by"],
            "label": len(wakes) <= MAX_WAKE_LABELS,
            "anchor": "end" if x(parse_rfc3339(w["at"])) > WIDTH - 60 else "middle",
        }
        for w in wakes
    ]
    ticks = [
        {"x": x(parse_rfc3339(t["at"])), "to": t["to"], "at": t["at"], "reason": t["reason"]}
        for t in doc["transitions"]
        if t["kind"] == "relay" and t["to"] != "connected"
    ]
    hours = []
    first_hour = (int(start // 3600) + 1) * 3600
    for h in range(first_hour, int(end) + 1, 3 * 3600):
        hours.append({"x": x(h), "label": f"{(h // 3600) % 24:02d}:00"})
    return {"bands": bands, "merged": merged, "wakes": markers, "relay_ticks": ticks, "hours": hours}


def _band(state: str, a: float, b: float, x: Any) -> dict[str, Any]:
    x0, x1 = x(a), x(b)
    return {
        "state": state,
        "x": x0,
        "width": max(round(x1 - x0, 2), 0.5),
        "minutes": round((b - a) / 60.0, 1),
    }


def spend_chart(doc: dict[str, Any]) -> dict[str, Any]:
    days = doc["spend"]["days"]
    top = max([d["total_usd"] for d in days] + [1e-9])
    slot = WIDTH / max(len(days), 1)
    bars = []
    for i, d in enumerate(days):
        h = round(d["total_usd"] / top * 100.0, 2) if d["total_usd"] > 0 else 0.0
        bars.append(
            {
                "x": round(i * slot + slot * 0.1, 2),
                "width": round(slot * 0.8, 2),
                "height": h,
                "y": round(110.0 - h, 2),
                "day": d["day"],
                "label": d["day"][5:],
                "usd": d["total_usd"],
            }
        )
    return {"bars": bars, "max_usd": top if top > 1e-9 else 0.0}


def caps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, key in (("all turns (agent.max_daily_usd)", "agent"), ("cron (cron.max_daily_usd)", "cron")):
        c = doc["spend"]["caps"][key]
        limit = c["limit_usd"]
        used = 0.0 if not limit else min(1.0, c["spent_usd"] / limit)
        out.append({"name": name, "key": key, **c, "used_pct": round(used * 100.0, 1)})
    return out


def routing_strip(doc: dict[str, Any]) -> list[dict[str, Any]]:
    r = doc["routing"]
    slot = WIDTH / 24
    return [
        {
            "x": round(i * slot, 2),
            "width": round(slot, 2),
            "hour": h["hour"],
            "strong": h["strong"],
            "model": h["model"],
            "error_rate": h["error_rate"],
            "current": i == r["current_hour"],
            "label": i % 3 == 0,
        }
        for i, h in enumerate(r["hours"])
    ]


def page_context(doc: dict[str, Any]) -> dict[str, Any]:
    """Everything ``overview.html`` needs; ``doc`` is the ``/api/overview`` document."""
    alerts = doc["alerts"]
    return {
        "o": doc,
        "timeline": timeline(doc),
        "spend_chart": spend_chart(doc),
        "caps": caps(doc),
        "routing_strip": routing_strip(doc),
        "outcomes": OUTCOMES,
        "alert_count": len(alerts["drift"]) + len(alerts["substitution"]) + len(alerts["budget"]),
        "recent_transitions": doc["transitions"][-12:][::-1],
        "recent_wakes": doc["wakes"][-WAKE_ROWS:][::-1],
        "more_wakes": max(0, len(doc["wakes"]) - WAKE_ROWS),
        "today_by_model": {m["model"]: m["usd"] for m in doc["spend"]["today"]["by_model"]},
    }
