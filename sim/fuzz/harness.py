"""The fuzzing harness and the strategies the targets share: ``run_target`` runs one property
under hypothesis with a fixed seed and no example database and returns a ``TargetResult``
carrying the shrunk falsifying input and its exception; ``require`` and ``PropertyFailed`` state a
property; ``json_values``, ``NASTY_JSON``, ``_chunked``, ``_raw_bodies`` and friends generate
JSON, hostile documents and request bodies."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

# --- the harness ------------------------------------------------------------------------------


@dataclass
class TargetResult:
    """One target's run: ``examples`` is how many inputs the property saw (shrinking included),
    ``falsifying`` the smallest input that broke it and ``error`` what it raised."""

    name: str
    examples: int
    seconds: float
    ok: bool
    falsifying: str | None = None
    error: str | None = None


class PropertyFailed(AssertionError):
    """A parser returned something its documentation does not allow."""


def require(condition: bool, message: str) -> None:
    """Raise ``PropertyFailed(message)`` unless ``condition``."""
    if not condition:
        raise PropertyFailed(message)


REPR_LIMIT = 2000
"""Longest falsifying example printed, characters (the rest is elided)."""


def _short(text: str, limit: int = REPR_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


def show(value: Any) -> str:
    """``repr(value)``, with an int past Python's 4300-digit ``str`` limit shown by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 14_000:
        return f"<int of {value.bit_length()} bits>"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{show(k)}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _describe(exc: BaseException) -> str:
    """``Type: message (at file:line)``, the line being the innermost frame that raised."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return _short(f"{type(exc).__name__}: {exc}{where}", 600)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log output while fuzzing (the config warns on every bad value); restored after."""
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(before)


def run_target(
    name: str, examples: int, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]
) -> TargetResult:
    """Run ``check`` on ``examples`` inputs drawn from ``strategy`` with a seed fixed by ``name``.

    ``check`` raises on a broken property (``PropertyFailed`` or the parser's own unexpected
    exception); the first failure is shrunk and reported, never re-raised.
    """
    count = 0
    last: list[tuple[str, BaseException]] = []

    @seed(zlib.crc32(name.encode()))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        report_multiple_bugs=False,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(strategy)
    def prop(value: Any) -> None:
        nonlocal count
        count += 1
        try:
            check(value)
        except Exception as exc:
            last[:] = [(_short(show(value)), exc)]
            raise

    started = time.perf_counter()
    with _quiet():
        try:
            prop()
        except Exception as exc:
            seconds = time.perf_counter() - started
            example, error = last[0] if last else ("(none recorded)", exc)
            return TargetResult(name, count, round(seconds, 2), False, example, _describe(error))
    return TargetResult(name, count, round(time.perf_counter() - started, 2), True)


# --- shared strategies ------------------------------------------------------------------------

SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff", "\udc80")
"""Lone surrogates: a JSON ``"\\ud800"`` escape decodes to one; UTF-8 cannot encode it."""
chars = st.characters() | st.sampled_from(SURROGATES)
texts = st.text(chars, max_size=40)
plain_texts = st.text(max_size=40)
"""Text without lone surrogates (what YAML, a terminal or argv can carry)."""
big_ints = st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**100, -(10**300)]) | st.integers(
    4290, 4299
).map(lambda n: 10**n)
"""Integers past int64 and up to the 4300 digits ``json.loads`` (Python's ``int``) reads."""
odd_floats = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 1e300])
numbers = st.integers() | big_ints | st.floats() | odd_floats


def json_values(keys: st.SearchStrategy[str] = texts, max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Anything ``json.loads`` can return: null, booleans, ints (huge too), floats (NaN and
    infinities too: Python's json reads them), strings with lone surrogates, lists, objects."""
    scalars = st.none() | st.booleans() | numbers | texts
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=max_leaves,
    )


def _dumps(value: Any) -> str:
    """JSON text of ``value``; a too-long int (Python's 4300-digit limit) becomes a digit run."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except ValueError:
        return "1" * 5000


json_texts = json_values().map(_dumps)


def _pick(options: tuple[str, ...]) -> st.SearchStrategy[str]:
    """One of ``options``, drawn by index (a strategy's repr then stays short)."""
    return st.integers(0, len(options) - 1).map(options.__getitem__)


NASTY_JSON = (
    "[" * 100_000,
    "[" * 5000 + "]" * 5000,
    '{"a":' * 2000 + "1" + "}" * 2000,
    "[" * 65 + "]" * 65,
    "[" * 64 + "]" * 64,
    "1" * 5000,
    "-" + "9" * 4301,
    "1e999",
    "NaN",
    "-Infinity",
    '"\\ud800"',
    '{"type": "\\udfff"}',
    '{"type": 1e999}',
    '{"type": "x", "type": 2}',
    "\ufeff{}",
    "{}",
    "[]",
    '""',
    "",
)
nasty_json_texts = _pick(NASTY_JSON)
"""Hostile documents: deep nesting (past the recursion limit and around ingress's 64), numbers
past the int limit, non-finite numbers, escaped lone surrogates, duplicate keys, a BOM."""


@st.composite
def _chunked(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` cut at random places (several WS messages carrying one NDJSON stream)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
    out, start = [], 0
    for cut in cuts:
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def _raw_bodies() -> st.SearchStrategy[bytes]:
    """Request bodies: JSON (UTF-8, with surrogates passed through), any bytes, UTF-16 JSON."""
    as_utf8 = (json_texts | nasty_json_texts).map(lambda t: t.encode("utf-8", "surrogatepass"))
    return as_utf8 | st.binary(max_size=200) | json_texts.map(lambda t: t.encode("utf-16", "surrogatepass"))
