"""The ``ingress-body`` and ``telegram-update`` targets: ``parse_body`` + ``build_event`` on
ingress bodies (SPEC 8.3: bad input is a 4xx), and ``parse_body`` + ``telegram.ingress_body`` +
``build_event`` on Telegram webhook updates; they share the field-value strategies."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from relay.connector import ingress, telegram
from relay.protocol import frames as F
from relay.protocol import framing
from sim.fuzz.harness import (
    TargetResult,
    _dumps,
    _raw_bodies,
    big_ints,
    json_values,
    numbers,
    require,
    run_target,
    texts,
)

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
    return run_target("ingress-body", examples, _bodies(near_valid_bodies), check_ingress)


def _bodies(near_valid: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, Any]]:
    """``("raw", bytes)`` or ``("value", JSON value)``: random bytes, a near-valid body encoded
    (lone surrogates kept), any JSON value, or the near-valid body as a value."""
    return st.one_of(
        st.tuples(st.just("raw"), _raw_bodies()),
        st.tuples(st.just("raw"), near_valid.map(lambda b: _dumps(b).encode("utf-8", "surrogatepass"))),
        st.tuples(st.just("value"), json_values()),
        st.tuples(st.just("value"), near_valid),
    )


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
    return run_target("telegram-update", examples, _bodies(near_valid_updates), check_telegram)
