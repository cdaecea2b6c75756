"""The ``frame-decoder`` target: ``FrameReader.feed``, ``encode_frame`` and ``parse_descriptor``
on arbitrary and near-valid NDJSON streams and descriptor objects (PROTOCOL.md sections 2, 4)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from common.errors import FrameTooLarge, ProtocolError
from relay.protocol import frames as F
from relay.protocol import framing
from sim.fuzz.harness import (
    TargetResult,
    _chunked,
    _dumps,
    json_texts,
    json_values,
    nasty_json_texts,
    numbers,
    require,
    run_target,
    texts,
)

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
