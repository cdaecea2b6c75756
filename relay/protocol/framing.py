"""NDJSON framing (PROTOCOL.md section 2): one JSON object per line, several per WS message.

``NdjsonSplitter`` keeps the trailing partial line between messages; ``decode_line`` validates a
line into a frame dict; ``encode_frame`` is its inverse. ``FrameReader`` joins the two for one
socket, the one reader of the gateway transport and the connector. ``LogLimiter`` decides which
dropped frames are worth a log line (once per kind per minute). ``pack_lines`` packs many lines
into each WS message for a sender.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from common.errors import FrameTooLarge, ProtocolError

DEFAULT_MAX_FRAME_BYTES = 1_048_576
"""Default limit for one WS message or one NDJSON line, bytes (1 MiB)."""
CLOSE_FRAME_TOO_LARGE = 1009
"""The WS close code for a frame over the limit (``FrameTooLarge``)."""
_decode = msgspec.json.Decoder().decode


class NonFinite(float):
    """A float the stdlib parsed from ``NaN``, ``Infinity``, ``-Infinity`` or an out-of-range
    number such as ``1e999`` (JSON has no such values; the stdlib reads them anyway). It is a
    plain ``float`` to every reader; its type tells an encoder that refuses non-finite floats
    (msgspec writes them as ``null``) to hand the object to the stdlib, which writes them back
    as they came (``gateway.inbox.store`` stores events this way)."""


def _parse_float(text: str) -> float:
    value = float(text)
    return value if value - value == 0.0 else NonFinite(text)


def utf8_len(text: str) -> int:
    """Size of ``text`` in UTF-8 bytes, cheap for ASCII-sized strings. A lone surrogate (which
    UTF-8 cannot encode) counts as the 3 bytes it takes with ``surrogatepass``: sizing never
    raises."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class NdjsonSplitter:
    """Split a stream of text chunks into complete lines.

    ``feed(chunk)`` returns the complete, non-blank lines the chunk finished, in order, and keeps
    the trailing partial line. Raises ``FrameTooLarge`` when a complete line or the kept partial
    line exceeds ``max_line_bytes`` (the caller closes the socket with 1009).
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._partial = ""

    @property
    def partial(self) -> str:
        """The bytes of an unfinished line kept for the next chunk."""
        return self._partial

    def feed(self, chunk: str) -> list[str]:
        if "\n" not in chunk:
            self._partial += chunk
            self._check(self._partial)
            return []
        pieces = chunk.split("\n")
        pieces[0] = self._partial + pieces[0]
        self._partial = pieces.pop()
        self._check(self._partial)
        out = []
        for line in pieces:
            if line.strip():
                self._check(line)
                out.append(line)
        return out

    def _check(self, line: str) -> None:
        # len(str) <= utf-8 bytes <= 4 * len(str): encode only when it could matter.
        if len(line) * 4 > self.max_line_bytes:
            size = utf8_len(line)
            if size > self.max_line_bytes:
                self._partial = ""
                raise FrameTooLarge(size, self.max_line_bytes)


def decode_line(line: str) -> dict[str, Any]:
    """Parse one NDJSON line into a frame dict (msgspec: 3.5x the stdlib on a typical inbound
    line; the stdlib only for what msgspec refuses, so the same lines parse to the same values).

    Raises ``ProtocolError`` with kind ``not_json`` (unparseable), ``not_object`` (JSON but not an
    object) or ``no_type`` (an object without a string ``type``).
    """
    try:
        obj = _decode(line)
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):
        # msgspec is strict where the stdlib is lenient (NaN, infinity, escaped lone
        # surrogates), hits the recursion limit, or cannot take a str holding a raw lone
        # surrogate at all: the stdlib decides those, so every line parses to what it parsed
        # to before (integers of any size included). Non-finite floats come back as
        # ``NonFinite``, so whoever stores them keeps them.
        try:
            obj = json.loads(line, parse_constant=NonFinite, parse_float=_parse_float)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"line is not json: {exc}", "not_json") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame is {type(obj).__name__}, not an object", "not_object")
    if not isinstance(obj.get("type"), str):
        raise ProtocolError("frame has no string 'type'", "no_type")
    return obj


class FrameReader:
    """One socket's frames: ``feed(message)`` takes the data of one TEXT (``str``) or BINARY
    (``bytes``, decoded as UTF-8 with replacement) WS message and returns the frames it completed,
    in order. A line that is not a frame is dropped: ``on_drop`` gets its ``ProtocolError`` (the
    caller rate-limits the log line with a ``LogLimiter``). Raises ``FrameTooLarge`` as
    ``NdjsonSplitter`` does: the caller closes the socket with ``CLOSE_FRAME_TOO_LARGE``.
    """

    def __init__(
        self, on_drop: Callable[[ProtocolError], None], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        self._splitter = NdjsonSplitter(max_frame_bytes)
        self._on_drop = on_drop

    def feed(self, message: str | bytes) -> list[dict[str, Any]]:
        text = message if isinstance(message, str) else message.decode("utf-8", errors="replace")
        frames = []
        for line in self._splitter.feed(text):
            try:
                frames.append(decode_line(line))
            except ProtocolError as exc:
                self._on_drop(exc)
        return frames


def encode_frame(frame: dict[str, Any]) -> str:
    """Serialise a frame dict to one NDJSON line (compact JSON + ``\\n``).

    Raises ``ProtocolError`` if it is not an object with a string ``type``.
    """
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ProtocolError("a frame must be an object with a string 'type'", "no_type")
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False) + "\n"


def pack_lines(rows: Sequence[tuple[int, str]], max_bytes: int) -> Iterator[tuple[str, int]]:
    """Pack ``(seq, NDJSON line)`` rows, in order, into WS message texts of at most
    ``max_bytes`` UTF-8 bytes each (a single longer line still goes alone), yielding
    ``(message, seq of its last line)``. A line without its ``\n`` gets one, so a receiver's
    splitter sees every line whole (PROTOCOL.md section 2)."""
    parts: list[str] = []
    size = 0
    last = 0
    for seq, line in rows:
        if not line.endswith("\n"):
            line += "\n"
        n = utf8_len(line)
        if parts and size + n > max_bytes:
            yield "".join(parts), last
            parts, size = [], 0
        parts.append(line)
        size += n
        last = seq
    if parts:
        yield "".join(parts), last


class LogLimiter:
    """Decide whether a dropped-frame kind may be logged now: once per kind per ``period_s``.

    Pure: the caller passes ``now`` (monotonic seconds).
    """

    def __init__(self, period_s: float = 60.0) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, kind: str, now: float) -> bool:
        last = self._last.get(kind)
        if last is not None and now - last < self.period_s:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        return True
