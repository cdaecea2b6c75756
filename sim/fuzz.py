"""``python -m sim --fuzz [--examples N] [--json]``: hypothesis at the parsers (issue #13).

Every parser that reads what a client, a connector, an operator or a config file sends gets
arbitrary and near-valid input, and must answer with a result of the documented shape or its
documented error, never another exception (a traceback for someone else's mistake):

- ``frame-decoder``: ``FrameReader.feed`` and ``parse_descriptor`` (PROTOCOL.md sections 2, 4);
- ``ingress-body``: ``parse_body`` + ``build_event`` (SPEC 8.3: bad input is a 4xx);
- ``telegram-update``: ``parse_body`` + ``telegram.ingress_body`` + ``build_event`` (the webhook);
- ``config``: ``load_config`` (SPEC 2 and docs/configuration.md: a bad value never crashes);
- ``cli``: the argument parsers of ``hermes-sidecar`` and ``hermes-relay`` and the checks that
  run before any command does (a usage error is one line and exit 2).

Each target is one function ``fuzz_<name>(examples) -> TargetResult``; ``fuzz_all`` runs them
all. Runs are reproducible: no example database, a fixed seed per target. Hypothesis shrinks a
failure; the result carries the smallest falsifying input and its exception.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import gateway.cli as gateway_cli
import gateway.config as gateway_config
import relay.cli as relay_cli
from common.errors import ConfigError, FrameTooLarge, ProtocolError, StartupError
from relay.connector import ingress, telegram
from relay.protocol import frames as F
from relay.protocol import framing

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
SHM = Path("/dev/shm")


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


# --- frame decoder ----------------------------------------------------------------------------

FRAME_LIMITS = (64, 1024, framing.DEFAULT_MAX_FRAME_BYTES)
DROP_KINDS = ("not_json", "not_object", "no_type")


frame_lines = st.one_of(
    json_texts,
    nasty_json_texts,
    st.builds(lambda t, rest: '{"type": ' + t + rest, json_texts, st.sampled_from(["}", ', "x": 1}', ""])),
    texts,
    json_values(max_leaves=4).map(lambda v: _dumps({"type": "inbound", "event": v})),
)
"""NDJSON lines: JSON of any shape, hostile documents, frame-like prefixes, random text."""
line_lists = st.lists(frame_lines, max_size=4)
separators = st.sampled_from(["\n", "\r\n", "\n\n"])
endings = st.sampled_from(["", "\n"])
message_kinds = st.sampled_from(["str", "str", "utf8", "junk"])
junk = st.binary(max_size=8)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[int, list[str | bytes]]:
    """A socket's messages: NDJSON lines (valid, hostile or random) joined and re-cut into
    TEXT (str) or BINARY (bytes: UTF-8, lone surrogates passed through, or random) messages."""
    limit = draw(st.sampled_from(FRAME_LIMITS))
    stream = draw(separators).join(draw(line_lists)) + draw(endings)
    messages: list[str | bytes] = []
    for piece in draw(_chunked(stream)):
        how = draw(message_kinds)
        if how == "str":
            messages.append(piece)
        elif how == "utf8":
            messages.append(piece.encode("utf-8", "surrogatepass"))
        else:
            messages.append(piece.encode("utf-8", "surrogatepass") + draw(junk))
    return limit, messages


roundtrip_frames = st.fixed_dictionaries(
    {"type": texts},
    optional={
        "requestId": texts,
        "event": st.recursive(
            st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False) | texts,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
            max_leaves=8,
        ),
    },
)
"""Frames ``encode_frame`` can write (no NaN: it is not equal to itself, so cannot round-trip
by ``==``; ints within ``json.dumps``' limit)."""


def check_frame_stream(case: tuple[int, list[str | bytes]]) -> None:
    """``FrameReader.feed`` returns frames (objects with a string ``type``) and hands every
    other line to ``on_drop`` as a ``ProtocolError`` of kind not_json/not_object/no_type; the
    only exception is ``FrameTooLarge`` for a line over the limit (PROTOCOL.md section 2,
    relay/protocol/framing.py), after which the caller closes the socket."""
    limit, messages = case
    drops: list[ProtocolError] = []
    reader = framing.FrameReader(drops.append, limit)
    for message in messages:
        try:
            out = reader.feed(message)
        except FrameTooLarge as exc:
            require(exc.size > exc.limit == limit, f"FrameTooLarge for {exc.size} bytes, limit {limit}")
            return
        require(isinstance(out, list), f"feed returned {type(out).__name__}")
        for frame in out:
            require(isinstance(frame, dict) and isinstance(frame.get("type"), str), f"bad frame {frame!r}")
    for drop in drops:
        require(type(drop) is ProtocolError and drop.kind in DROP_KINDS, f"bad drop {drop!r}")


@st.composite
def _roundtrips(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str]]:
    frames = draw(st.lists(roundtrip_frames, min_size=1, max_size=4))
    text = "".join(framing.encode_frame(f) for f in frames)
    return frames, draw(_chunked(text))


def check_frame_roundtrip(case: tuple[list[dict[str, Any]], list[str]]) -> None:
    """``encode_frame`` and ``FrameReader`` are inverses through any cutting of the stream
    into messages (relay/protocol/framing.py: "``encode_frame`` is its inverse")."""
    frames, messages = case
    drops: list[ProtocolError] = []
    reader = framing.FrameReader(drops.append)
    got = [frame for message in messages for frame in reader.feed(message)]
    require(not drops, f"dropped {drops!r}")
    require(got == frames, f"read back {got!r}")


descriptor_values = (
    st.none() | st.booleans() | numbers | texts | st.lists(texts | st.integers(), max_size=4) | json_values()
)
DESCRIPTOR_OPTIONAL = ("supported_ops", "supports_wake_at", "buffered", "supports_ack_batch")
descriptor_objects = st.one_of(
    st.fixed_dictionaries(
        {key: descriptor_values for key in F.DESCRIPTOR_REQUIRED},
        optional={key: descriptor_values for key in DESCRIPTOR_OPTIONAL},
    ),
    st.fixed_dictionaries(
        {}, optional={key: descriptor_values for key in (*F.DESCRIPTOR_REQUIRED, *DESCRIPTOR_OPTIONAL)}
    ),
)
"""Descriptor objects with every required key (values of any type) or a random subset."""


def check_descriptor(frame: dict[str, Any]) -> None:
    """``parse_descriptor`` returns a ``Descriptor`` whose ``max_message_length`` is a positive
    int (a bad one becomes 4096) or raises ``ProtocolError`` (PROTOCOL.md section 4,
    relay/protocol/frames.py); nothing else."""
    try:
        d = F.parse_descriptor(frame)
    except ProtocolError:
        return
    require(isinstance(d.max_message_length, int) and d.max_message_length > 0, f"length {d!r}")
    require(d.buffered is None or d.buffered >= 0, f"buffered {d.buffered!r}")


def check_frames(case: tuple[str, Any]) -> None:
    """One case of the frame-decoder target (see the three checks it dispatches to)."""
    kind, value = case
    if kind == "stream":
        check_frame_stream(value)
    elif kind == "roundtrip":
        check_frame_roundtrip(value)
    else:
        check_descriptor(value)


def fuzz_frame_decoder(examples: int) -> TargetResult:
    """The NDJSON frame decoder and the descriptor check: arbitrary TEXT/BINARY messages
    (random NDJSON, huge numbers, deep nesting, lone surrogates, invalid UTF-8) give frames,
    drops or ``FrameTooLarge`` only; encoded frames read back equal through any chunking;
    ``parse_descriptor`` on random objects returns or raises ``ProtocolError`` only."""
    strategy = st.one_of(
        st.tuples(st.just("stream"), _streams()),
        st.tuples(st.just("roundtrip"), _roundtrips()),
        st.tuples(
            st.just("descriptor"),
            st.fixed_dictionaries(
                {"type": st.just("descriptor"), "descriptor": descriptor_objects | json_values()}
            ),
        ),
    )
    return run_target("frame-decoder", examples, strategy, check_frames)


# --- ingress body -----------------------------------------------------------------------------

field_values = (
    st.none()
    | st.booleans()
    | numbers
    | texts
    | st.sampled_from(["", " ", "0", "-1", "\x00", "text", "photo", "other"])
    | st.sampled_from(ingress.MESSAGE_TYPES)
    | json_values(max_leaves=4)
)
"""Values for a known field: right and wrong types, blanks, NaN, huge ints, surrogates."""
INGRESS_FIELDS = (
    "chat_id",
    "user_id",
    "message_id",
    "text",
    "message_type",
    "caption",
    "thread_id",
    "reply_to_message_id",
    "auto_thread_created",
    *ingress.SOURCE_STRINGS,
    *ingress.SOURCE_EXTRAS,
)
near_valid_bodies = st.fixed_dictionaries(
    {
        "chat_id": st.text(min_size=1, max_size=8) | st.integers() | field_values,
        "user_id": st.text(min_size=1, max_size=8) | st.integers() | field_values,
        "message_id": st.text(min_size=1, max_size=8) | st.integers() | field_values,
        "text": st.text(min_size=1, max_size=20) | field_values,
    },
    optional={
        **{key: field_values for key in INGRESS_FIELDS[4:]},
        "source": st.dictionaries(
            st.sampled_from([*ingress.SOURCE_RESERVED, "scope_id", "chat_name", "x"]) | texts,
            field_values,
            max_size=3,
        )
        | field_values,
    },
)
"""Bodies near the valid shape of SPEC 8.3: every field present or not, of any type."""


def check_event(event: Any) -> None:
    """What ``build_event`` returns can be stored and sent: text and ids are strings, the
    source names its chat and user, every string is valid Unicode, and the ``inbound`` frame
    ``ingest`` writes reads back equal (PROTOCOL.md section 4)."""
    require(isinstance(event, dict), f"event is {type(event).__name__}")
    require(isinstance(event.get("text"), str), "event.text is not a string")
    require(event.get("message_type") in ingress.MESSAGE_TYPES, "bad message_type")
    require(isinstance(event.get("message_id"), str) and event["message_id"].strip() != "", "bad message_id")
    source = event.get("source")
    require(isinstance(source, dict), "event.source is not an object")
    for key in ("chat_id", "user_id"):
        require(isinstance(source.get(key), str) and source[key].strip() != "", f"bad source.{key}")
    line = framing.encode_frame(F.inbound(event, "b" * 32))
    line.encode("utf-8")  # a lone surrogate here would break the store and the socket
    frame = framing.decode_line(line)
    require(frame["event"] == event or _has_nan(event), "the inbound frame does not read back equal")


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return value != value
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


def check_ingress_error(exc: ingress.IngressError) -> None:
    """A refusal is a 4xx with a message (SPEC 8.3, relay/connector/ingress.py)."""
    require(400 <= exc.status < 500, f"status {exc.status}")
    require(isinstance(str(exc), str) and str(exc) != "", "empty message")


def check_ingress(case: tuple[str, Any]) -> None:
    """``parse_body`` (raw bytes) then ``build_event`` (any JSON value): an event (see
    ``check_event``) or ``IngressError`` 4xx; never another exception (SPEC 8.3: "Bad input is
    always a 4xx")."""
    kind, value = case
    try:
        body = ingress.parse_body(value) if kind == "raw" else value
        event = ingress.build_event("relay", body)
    except ingress.IngressError as exc:
        check_ingress_error(exc)
        return
    check_event(event)


def fuzz_ingress_body(examples: int) -> TargetResult:
    """The ingress body (``POST /ingress/{platform}``): raw bytes through ``parse_body`` and
    ``build_event`` (depth limit, NaN/Infinity, surrogates, invalid UTF-8), arbitrary JSON
    values and bodies near the valid shape: an event of the documented shape or a 4xx
    ``IngressError``, nothing else."""
    strategy = st.one_of(
        st.tuples(st.just("raw"), _raw_bodies()),
        st.tuples(
            st.just("raw"), near_valid_bodies.map(lambda b: _dumps(b).encode("utf-8", "surrogatepass"))
        ),
        st.tuples(st.just("value"), json_values()),
        st.tuples(st.just("value"), near_valid_bodies),
    )
    return run_target("ingress-body", examples, strategy, check_ingress)


# --- Telegram update --------------------------------------------------------------------------

SQLITE_INT = (-(2**63), 2**63 - 1)
"""The store keys webhook updates by ``update_id`` in an SQLite INTEGER."""
tg_ids = st.integers(-(10**12), 10**12) | field_values
tg_chats = st.fixed_dictionaries(
    {"id": tg_ids},
    optional={
        "type": st.sampled_from(["private", "group", "supergroup", "channel", "x"]) | field_values,
        "title": field_values,
        "first_name": field_values,
        "last_name": field_values,
        "username": field_values,
        "is_forum": field_values,
    },
)
tg_messages = st.fixed_dictionaries(
    {"message_id": tg_ids, "chat": tg_chats | field_values},
    optional={
        "from": st.fixed_dictionaries(
            {"id": tg_ids}, optional={"username": field_values, "first_name": field_values}
        )
        | field_values,
        "text": st.text(max_size=20) | field_values,
        "caption": field_values,
        "message_thread_id": tg_ids,
        "reply_to_message": st.fixed_dictionaries(
            {"message_id": tg_ids},
            optional={"forum_topic_created": st.fixed_dictionaries({"name": field_values})},
        )
        | field_values,
        **{kind: field_values for kind in ("photo", "voice", "document", "sticker")},
    },
)
near_valid_updates = st.fixed_dictionaries(
    {"update_id": st.integers(0, 2**31) | big_ints | field_values},
    optional={"message": tg_messages | field_values, "edited_message": tg_messages},
)
"""Webhook Updates near the Bot API shape: message updates, other updates, wrong types."""


def check_telegram(case: tuple[str, Any]) -> None:
    """The webhook path before the store (relay/connector/webhook.py): ``parse_body``, then
    ``telegram.ingress_body`` gives ``(update_id, None)`` for a non-message update or
    ``(update_id, body)`` that ``build_event`` turns into an event; a bad update is an
    ``IngressError`` 4xx. ``update_id`` is an int the store can key (an SQLite INTEGER), so a
    client's mistake never becomes the store's 503."""
    kind, value = case
    try:
        update = ingress.parse_body(value) if kind == "raw" else value
        update_id, body = telegram.ingress_body(update)
        require(isinstance(update_id, int) and not isinstance(update_id, bool), f"update_id {update_id!r}")
        require(SQLITE_INT[0] <= update_id <= SQLITE_INT[1], f"update_id {update_id} does not fit SQLite")
        if body is None:
            require(
                isinstance(update, dict) and update.get("message") is None, "a message update was ignored"
            )
            return
        event = ingress.build_event(telegram.PLATFORM, body)
    except ingress.IngressError as exc:
        check_ingress_error(exc)
        return
    check_event(event)


def fuzz_telegram_update(examples: int) -> TargetResult:
    """The Telegram webhook Update: raw bytes, arbitrary JSON and near-valid updates through
    ``ingress_body`` and ``build_event``: ignored, an event, or a 4xx ``IngressError``."""
    strategy = st.one_of(
        st.tuples(st.just("raw"), _raw_bodies()),
        st.tuples(
            st.just("raw"), near_valid_updates.map(lambda u: _dumps(u).encode("utf-8", "surrogatepass"))
        ),
        st.tuples(st.just("value"), json_values()),
        st.tuples(st.just("value"), near_valid_updates),
    )
    return run_target("telegram-update", examples, strategy, check_telegram)


# --- config -----------------------------------------------------------------------------------

CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("default", "provider"),
    "gateway": (
        "relay_url",
        "relay_identities",
        "relay_max_frame_bytes",
        "shutdown_timeout_seconds",
        "history_retention_days",
        "scale_to_zero",
    ),
    "agent": (
        "delivery_give_up_hours",
        "history_max_turns",
        "context_max_tokens",
        "session_reset",
        "history_retention_days",
        "max_daily_usd",
    ),
    "cron": ("timezone", "drift_policy", "max_concurrent", "max_daily_usd"),
    "kanban": ("default_assignee", "max_in_progress", "max_in_progress_per_profile"),
    "routing": ("enabled", "strong_model", "strong_provider", "cheap_model", "error_threshold_pct"),
}
"""The config.yaml keys of docs/configuration.md, by section."""
NESTED_KEYS = {
    "scale_to_zero": (
        "idle_timeout_minutes",
        "cooldown_seconds",
        "ack_timeout_seconds",
        "suspend",
        "external_waker",
    ),
    "session_reset": ("mode", "idle_minutes", "at_hour"),
}
ENV_NAMES = (
    "HERMES_MODEL",
    "HERMES_SCALE_TO_ZERO",
    "GATEWAY_RELAY_URL",
    "GATEWAY_RELAY_ID",
    "GATEWAY_RELAY_SECRET",
    "GATEWAY_RELAY_WAKE_URL",
    "HERMES_WAKE_SECRET",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "FLY_APP_NAME",
)
"""The environment overrides ``load_config`` reads (docs/configuration.md, hermes-sidecar)."""
yaml_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**64, -1, 0, 1023, 1024, 23, 24])
    | st.floats()
    | plain_texts
    | _pick(
        (
            "UTC",
            "Europe/Berlin",
            "America",
            "zone.tab",
            "tzdata.zi",
            "posixrules",
            "../etc/passwd",
            "/etc/localtime",
            "a" * 300,
            "",
            "30",
            " 1e999 ",
            "nan",
            "http://x",
            "https://h/v1/",
            "http://[::1",
            "ws://relay:1/x?q",
            "wss://[::1]:99999",
            "autostop",
            "fly-api",
            "both",
            "openai",
            "hermes",
            "fail_closed",
        )
    )
)
"""YAML scalars: right and wrong types, odd numbers, names of tz files that are not zones."""
url_texts = st.sampled_from(["http://", "https://", "ws://", "wss://", "ftp://", "http://[", ""]).flatmap(
    lambda scheme: st.text(st.characters(codec="ascii"), max_size=20).map(lambda rest: scheme + rest)
)
yaml_values = st.recursive(
    yaml_scalars | url_texts,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(plain_texts | st.sampled_from(["platform", "bot_id"]), inner, max_size=3)
    ),
    max_leaves=6,
)


def _section(keys: tuple[str, ...]) -> st.SearchStrategy[Any]:
    values: dict[str, st.SearchStrategy[Any]] = {}
    for key in keys:
        nested = NESTED_KEYS.get(key)
        values[key] = (
            st.fixed_dictionaries({}, optional={k: yaml_values for k in nested}) | yaml_values
            if nested
            else yaml_values
        )
    return st.fixed_dictionaries({}, optional=values) | yaml_values


named = st.dictionaries(
    plain_texts | st.sampled_from(["default", "openai", "a.b"]),
    st.fixed_dictionaries(
        {},
        optional={
            k: yaml_values | url_texts
            for k in ("base_url", "api_key_env", "kind", "model", "provider", "system_prompt")
        },
    )
    | yaml_values,
    max_size=3,
)
config_documents = st.fixed_dictionaries(
    {},
    optional={
        **{section: _section(keys) for section, keys in CONFIG_KEYS.items()},
        "providers": named | yaml_values,
        "profiles": named | yaml_values,
        "modle": yaml_values,
    },
)
"""config.yaml documents with the real keys of docs/configuration.md and random values."""
NASTY_YAML = (
    "a: &x [*x]\n",
    "gateway: &g {scale_to_zero: *g}\n",
    "? [a, b]\n: c\n",
    "{[1]: 2}\n",
    "!!python/object:os.system {}\n",
    "!!binary aGVsbG8=\n",
    "!!set {a, b}\n",
    "cron: {timezone: 2001-12-14}\n",
    "cron: {max_concurrent: 1_000}\n",
    "agent: {history_max_turns: 0x10}\n",
    "agent: {history_max_turns: 1" + "0" * 5000 + "}\n",
    "gateway: {scale_to_zero: {idle_timeout_minutes: .inf}}\n",
    "gateway: {scale_to_zero: {idle_timeout_minutes: 1e308}}\n",
    "gateway:\n  <<: {relay_url: ws://x}\n",
    "- " * 300 + "x",
    "a: 1\na: 2\n",
    "%YAML 1.1\n---\na: 1\n",
    "--- 1\n--- 2\n",
    "\ufeffmodel: {default: x}\n",
    'model: {default: "\\ud800"}\n',
    "\t",
    "",
    "null",
    "[]",
)
nasty_yaml = _pick(NASTY_YAML)
DEEP_YAML = "[" * 500 + "]" * 500
"""Nesting past the recursion limit of PyYAML's (pure Python) composer: a ``RecursionError``.
Slow to parse (~0.1 s), so one example in ``DEEP_ONE_IN`` is this one."""
DEEP_ONE_IN = 100
"""YAML that is recursive, tagged, deeply nested, multi-document, or not a mapping."""


env_texts = (
    plain_texts
    | st.sampled_from(SURROGATES)
    | url_texts
    | st.sampled_from(["1", "on", "http://[::1", "a:b", " "])
)
"""Env values (os.environ keeps undecodable bytes as lone surrogates)."""
envs = st.dictionaries(st.sampled_from(ENV_NAMES), env_texts, max_size=4)
layouts = st.sampled_from(["doc", "doc", "doc", "nasty", "text", "bytes", "none", "dir"])
deep_dice = st.sampled_from(range(DEEP_ONE_IN))


@st.composite
def _config_cases(draw: st.DrawFn) -> tuple[bytes | None, dict[str, str]]:
    """``(config.yaml bytes or None for no file, env)``."""
    how = draw(layouts)
    if draw(deep_dice) == DEEP_ONE_IN - 1:
        how = "deep"
    data: bytes | None
    if how == "deep":
        data = DEEP_YAML.encode()
    elif how == "doc":
        from yaml import safe_dump

        doc = draw(config_documents)
        try:
            data = safe_dump(doc, allow_unicode=draw(st.booleans())).encode("utf-8")
        except (ValueError, OverflowError):
            data = b"{}"
    elif how == "nasty":
        data = draw(nasty_yaml).encode("utf-8", "surrogatepass")
    elif how == "text":
        data = draw(plain_texts).encode("utf-8")
    elif how == "bytes":
        data = draw(st.binary(max_size=60))
    elif how == "dir":
        data = b"<dir>"
    else:
        data = None
    return data, draw(envs)


def _finite(value: Any, minimum: float, strict: bool = False) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )


def check_config_values(c: gateway_config.Config) -> None:
    """Every resolved value has the type and range docs/configuration.md allows."""
    from zoneinfo import ZoneInfo

    ZoneInfo(c.cron_timezone)
    require(c.relay_url is None or c.relay_url.startswith(("ws://", "wss://")), f"relay_url {c.relay_url!r}")
    require(
        bool(c.relay_identities)
        and all(isinstance(p, str) and isinstance(b, str) for p, b in c.relay_identities),
        f"relay_identities {c.relay_identities!r}",
    )
    require(
        isinstance(c.relay_max_frame_bytes, int) and c.relay_max_frame_bytes >= 1024, "relay_max_frame_bytes"
    )
    for p in c.providers.values():
        url = urlsplit(p.base_url)
        require(url.scheme in ("http", "https") and bool(url.hostname), f"base_url {p.base_url!r}")
        require(p.kind in gateway_config.PROVIDER_KINDS, f"kind {p.kind!r}")
    z = c.scale_to_zero
    require(z.idle_timeout_s > 0, f"idle_timeout_s {z.idle_timeout_s}")
    require(_finite(z.cooldown_s, 0) and _finite(z.ack_timeout_s, 0), "cooldown/ack_timeout")
    require(z.suspend in gateway_config.SUSPEND_MODES, f"suspend {z.suspend!r}")
    require(_finite(c.shutdown_timeout_s, 0), "shutdown_timeout_s")
    require(_finite(c.delivery_give_up_hours, 0, strict=True), "delivery_give_up_hours")
    require(_finite(c.history_retention_days, 0, strict=True), "history_retention_days")
    require(_finite(c.ops_history_retention_days, 0, strict=True), "ops_history_retention_days")
    require(_finite(c.session_reset_idle_minutes, 0, strict=True), "session_reset_idle_minutes")
    require(c.session_reset_at_hour in range(24), "session_reset_at_hour")
    require(c.drift_policy in gateway_config.DRIFT_POLICIES, f"drift_policy {c.drift_policy!r}")
    require(isinstance(c.cron_max_concurrent, int) and c.cron_max_concurrent >= 1, "cron_max_concurrent")
    for name in ("cron_max_daily_usd", "agent_max_daily_usd"):
        value = getattr(c, name)
        require(value is None or _finite(value, 0), f"{name} {value!r}")
    require(_finite(c.routing_error_threshold_pct, 0), "routing_error_threshold_pct")
    require(
        c.relay_id is None or (":" not in c.relay_id and "=" not in c.relay_id), f"relay_id {c.relay_id!r}"
    )


def check_config(case: tuple[bytes | None, dict[str, str]]) -> None:
    """``load_config(home, env)`` with ``strict=False`` never raises and resolves every value
    into its documented type and range (docs/configuration.md "A bad value never crashes the
    sidecar"); with ``strict=True`` the only exception is ``StartupError``, raised exactly when
    the non-strict load warned that the file is unusable and used all defaults."""
    data, env = case
    parent = str(SHM) if SHM.is_dir() else None
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        home = Path(tmp)
        path = home / "config.yaml"
        if data == b"<dir>":
            path.mkdir()
        elif data is not None:
            path.write_bytes(data)
        try:
            c = gateway_config.load_config(home, env, strict=True)
        except StartupError:
            c = gateway_config.load_config(home, env, strict=False)
            require(_unusable(c, path), "strict load refused a file the lenient load used")
        else:
            # A usable file loads the same either way: one (strict) load stands for both.
            require(not _unusable(c, path), "strict load used a file it called unusable")
        check_config_values(c)


def _unusable(c: gateway_config.Config, path: Path) -> bool:
    """Whether the load warned that the file is unusable and took all defaults."""
    return any(w.startswith(f"config {path} ") and w.endswith("; using defaults") for w in c.warnings)


def fuzz_config(examples: int) -> TargetResult:
    """``load_config`` on config.yaml files from random documents with the real keys (and
    random text, bytes, hostile YAML, no file, a directory) and random env overrides."""
    return run_target("config", examples, _config_cases(), check_config)


# --- CLI arguments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One (sub-)command of a parser: its ``path`` of names, its option strings (``flags``
    take no value; ``good`` holds values each option accepts), its positional arguments and
    required options: what a clean parse needs."""

    path: tuple[str, ...]
    options: tuple[str, ...]
    flags: frozenset[str]
    good: dict[str, tuple[str, ...]]
    positionals: int
    required: tuple[str, ...]
    leaf: bool


TYPED_GOOD = ("1", "7", "0", "0.5", "1024", "8080", "65535")
TEXT_GOOD = ("x", "gw=secret", "gw=1:tok", "telegram:1", "every 30m", "http://127.0.0.1:1", "UTC")


def _good(action: argparse.Action) -> tuple[str, ...]:
    if action.choices is not None:
        return tuple(str(c) for c in action.choices)
    return TYPED_GOOD if action.type is not None else TEXT_GOOD


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Command]:
    """``parser`` and every sub-command under it."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    out = [
        Command(
            path,
            tuple(sorted(o for a in options for o in a.option_strings)),
            frozenset(o for a in options if a.nargs == 0 for o in a.option_strings),
            {o: _good(a) for a in options for o in a.option_strings},
            sum(1 for a in parser._actions if not a.option_strings and a not in subs),
            tuple(a.option_strings[0] for a in options if a.required),
            not subs,
        )
    ]
    for action in subs:
        for name, sub in action.choices.items():
            out.extend(_commands(sub, (*path, name)))
    return out


ODD_WORDS = ("-", "--", "-1", "nan", "inf", "-inf", "1e999", "65536", "0", "a:b", "x=1:2", "--h", "-hx")
values = st.one_of(plain_texts, numbers.map(show), st.sampled_from(ODD_WORDS))
"""Option values: random text, numbers of every size, odd words."""


def _words(tokens: list[str]) -> st.SearchStrategy[str]:
    """One argv word: a real option, ``--option=value``, option-like or random text, a number."""
    real = st.sampled_from(tokens) if tokens else st.just("--help")
    return st.one_of(
        real,
        real,
        st.builds(lambda t, v: f"{t}={v}", real, values),
        values,
        plain_texts.map(lambda t: "--" + t),
        plain_texts.map(lambda t: "-" + t),
    )


@st.composite
def _clean(draw: st.DrawFn, c: Command) -> list[str]:
    """A leaf command with its required options, some others (a value after each that takes
    one) and its positionals: mostly parses cleanly, with odd values."""
    argv = list(c.path)
    chosen = [*c.required, *draw(st.lists(st.sampled_from(c.options), max_size=4))] if c.options else []
    for option in chosen:
        argv.append(option)
        if option not in c.flags:
            argv.append(draw(st.sampled_from(c.good[option]) | st.sampled_from(c.good[option]) | values))
    argv.extend(draw(st.lists(values, min_size=c.positionals, max_size=c.positionals)))
    return argv


def _argv(parser: argparse.ArgumentParser) -> st.SearchStrategy[list[str]]:
    """argv lists: a leaf command with its options and odd values, a command path followed by
    random words (its options among them), or random words from the start."""
    commands = _commands(parser)
    leaves = [c for c in commands if c.leaf]
    every = sorted({o for c in commands for o in c.options} | {n for c in commands for n in c.path} | {"-h"})
    return st.one_of(
        st.sampled_from(leaves).flatmap(_clean),
        st.sampled_from(leaves).flatmap(_clean),
        st.sampled_from(commands).flatmap(
            lambda c: st.lists(_words(list(c.options)), max_size=6).map(lambda rest: [*c.path, *rest])
        ),
        st.lists(_words(every), max_size=6),
    )


def _parse(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[argparse.Namespace | None, int | None, str]:
    """``parse_args`` with its output captured: ``(namespace, None, "")`` or ``(None, exit code,
    output)`` for ``SystemExit``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            return parser.parse_args(argv), None, ""
        except SystemExit as exc:
            return None, exc.code if isinstance(exc.code, int) else -1, out.getvalue()


def _asked_help(argv: list[str]) -> bool:
    return any(a.startswith("-h") or a.startswith("--h") for a in argv)


def check_gateway_argv(parser: argparse.ArgumentParser, argv: list[str], metrics_port: str) -> None:
    """``hermes-sidecar``: a clean parse, ``UsageError`` (main prints one line, exit 2) or help
    (exit 0); then the checks ``main`` makes before running anything (``$PORT`` as ``--port``,
    ``dev``'s derived connector port, the metrics port from ``$METRICS_PORT`` or derived) give
    ports in 1-65535 or raise ``argparse.ArgumentTypeError``, exit 2 (gateway/cli/__init__.py)."""
    try:
        args, code, _ = _parse(parser, argv)
    except gateway_cli.UsageError:
        return
    if args is None:
        require(code == 0 and _asked_help(argv), f"exit {code}")
        return
    try:
        if isinstance(getattr(args, "port", 0), str):
            args.port = gateway_cli._port(args.port)
        if args.command == "dev" and not args.relay_port and args.port:
            require(gateway_cli.derived_port(args.port, 1, "--relay-port") <= 65535, "relay port")
        if args.command in ("run", "dev"):
            port = gateway_cli.metrics_port_of(args, {"METRICS_PORT": metrics_port})
            require(port is None or 0 < port <= 65535, f"metrics port {port}")
    except argparse.ArgumentTypeError:
        return


def check_relay_argv(parser: argparse.ArgumentParser, argv: list[str], env: dict[str, str]) -> None:
    """``hermes-relay``: a clean parse or ``SystemExit`` 2 with one ``hermes-relay ...: error:``
    message (or 0 for help); then the ``--gateway``/``--telegram`` items merged with
    ``RELAY_GATEWAYS``/``RELAY_TELEGRAM`` give a dict or ``ConfigError`` (exit 2), and the
    ``--host`` loopback check answers a bool (relay/cli.py)."""
    args, code, output = _parse(parser, argv)
    if args is None:
        require(
            (code == 2 and output.startswith("hermes-relay")) or (code == 0 and _asked_help(argv)),
            f"exit {code}: {output[:200]!r}",
        )
        return
    with contextlib.suppress(ConfigError):
        bots = relay_cli.parse_telegram(args.telegram, env.get("RELAY_TELEGRAM"))
        require(all(":" in token for token in bots.values()), f"bots {bots!r}")
    if args.command == "serve":
        with contextlib.suppress(ConfigError):
            secrets = relay_cli.parse_gateways(args.gateway, env.get("RELAY_GATEWAYS"))
            require(all(gid and secret for gid, secret in secrets.items()), f"secrets {secrets!r}")
        require(isinstance(relay_cli.is_loopback(args.host), bool), "is_loopback")


def fuzz_cli(examples: int) -> TargetResult:
    """The command lines of ``hermes-sidecar`` and ``hermes-relay``: argv lists of real
    options, commands, option-like and random strings (and random ``$METRICS_PORT``,
    ``RELAY_GATEWAYS``, ``RELAY_TELEGRAM``) parse or fail the documented way; no command runs."""
    g_parser, r_parser = gateway_cli.build_parser(), relay_cli.build_parser()
    env_text = plain_texts | st.sampled_from(["a=b", "a=1:x", "=x", "a:b=c", "a=b,c=d", ",", "a=\u00e9:1"])
    strategy = st.one_of(
        st.tuples(st.just("gateway"), _argv(g_parser), env_text.map(lambda t: {"METRICS_PORT": t})),
        st.tuples(
            st.just("relay"),
            _argv(r_parser),
            st.fixed_dictionaries({}, optional={"RELAY_GATEWAYS": env_text, "RELAY_TELEGRAM": env_text}),
        ),
    )

    def check(case: tuple[str, list[str], dict[str, str]]) -> None:
        which, argv, env = case
        if which == "gateway":
            check_gateway_argv(g_parser, argv, env["METRICS_PORT"])
        else:
            check_relay_argv(r_parser, argv, env)

    return run_target("cli", examples, strategy, check)


# --- all --------------------------------------------------------------------------------------

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
