"""Inbox persistence: admit a batch of inbound frames durably, quarantine what can never be
handled, and keep each inbound turn's durable step (``gateway/core/turn.py``).

``admit(frames)`` commits every new event in one transaction (synchronous=FULL). A frame whose
``bufferId`` or ``(platform, chat_id, message_id)`` is already stored is a duplicate: acked
again by the transport, never handled twice. A frame without a ``message_id`` is de-duplicated
by its ``bufferId`` alone. A frame that can never be stored as a message (no ``event`` object,
no usable chat, invalid Unicode, an unknown type carrying a ``bufferId``) is **quarantined**:
kept with ``status = 'rejected'`` and its error, and acked like the rest of its batch (SPEC
8.1). Only a transient storage error raises, which leaves the whole batch unacked.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import msgspec

from common.sqlite import insert_rows, read_all, read_one, run_tx, write_one
from gateway.core.turn import TurnEvent, TurnState, transition

_COLS = "id, buffer_id, platform, bot_id, chat_id, message_id, profile, event"


@dataclass(frozen=True)
class InboxItem:
    """One admitted user message (``event`` is the inbound frame's ``event`` object)."""

    id: int
    buffer_id: str | None
    platform: str
    chat_id: str
    message_id: str
    profile: str | None
    event: dict[str, Any]
    bot_id: str = ""

    @property
    def source(self) -> dict[str, Any]:
        src = self.event.get("source")
        return src if isinstance(src, dict) else {}


@dataclass(frozen=True)
class Rejected:
    """A quarantined frame: its ``bufferId`` (None when it had none), a metric ``reason``
    (``bad_shape``, ``invalid_unicode``, ``unknown_type``) and the error kept in state.db."""

    buffer_id: str | None
    reason: str
    error: str


@dataclass
class Admission:
    """What ``admit`` did with one batch: ``new`` rows to handle, ``rejected`` (quarantined)
    frames, and how many were ``duplicates`` of stored ones."""

    new: list[InboxItem] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: int = 0


@dataclass(frozen=True)
class TurnUsage:
    """What a model call of a turn used: the model asked and its provider, token counts (None
    when unknown), cost in USD (None when unknown) and the model the provider says answered."""

    model: str
    provider: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    answered_model: str | None = None


@dataclass(frozen=True)
class TurnRow:
    """An inbound turn's durable step: state, the committed answer ``chunks`` (None before
    ``answered``), how many were confirmed sent, the outcome label and error, model calls
    made, and when it was answered (Unix seconds)."""

    state: TurnState
    chunks: list[str] | None
    chunks_sent: int
    outcome: str | None
    error: str | None
    model_calls: int
    answered_at: float | None


def _bad_unicode(value: Any, path: str) -> str | None:
    """The dotted path of the first string (key or value) that is not valid UTF-8 text (a lone
    surrogate), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if _bad_unicode(k, path) is not None:
                return f"{path}.<key>"
            found = _bad_unicode(v, f"{path}.{k}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _bad_unicode(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


_encode = msgspec.json.Encoder().encode


def _valid_unicode(frame: dict[str, Any]) -> bool:
    """True when every string of ``frame`` is valid UTF-8 text, in one pass of C: msgspec
    refuses to encode a lone surrogate. False also for anything else it cannot encode (very
    deep nesting): ``_bad_unicode`` then decides, in Python."""
    try:
        _encode(frame)
    except Exception:  # UnicodeEncodeError above all; the walk gives the exact answer
        return False
    return True


def _id_text(value: Any) -> str | None:
    """An id kept as a string (numbers too); None when absent, empty or not a scalar."""
    if type(value) is str:
        return value if value.strip() else None
    if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value)
    return text if text.strip() else None


def check_frame(frame: dict[str, Any]) -> Rejected | None:
    """Why ``frame`` can never be handled as a message (a ``Rejected``), or None if it can."""
    bid = frame.get("bufferId")
    bid_text = None if bid is None else str(bid)
    if frame.get("type") != "inbound":
        return Rejected(
            bid_text,
            "unknown_type",
            f"frame type {frame.get('type')!r} carries a bufferId but is not 'inbound'",
        )
    bad = None if _valid_unicode(frame) else _bad_unicode(frame, "frame")
    if bad is not None:
        return Rejected(bid_text, "invalid_unicode", f"{bad} is not valid unicode (lone surrogate)")
    ev = frame.get("event")
    if not isinstance(ev, dict):
        return Rejected(bid_text, "bad_shape", "inbound frame has no 'event' object")
    src = ev.get("source")
    if not isinstance(src, dict):
        return Rejected(bid_text, "bad_shape", "event has no 'source' object")
    if _id_text(src.get("chat_id")) is None:
        return Rejected(bid_text, "bad_shape", "event.source.chat_id is missing or not a string/number")
    return None


def _safe(text: str) -> str:
    """``text`` with anything that is not valid UTF-8 escaped (for storing a rejected frame)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


InTx = Callable[[sqlite3.Connection, list[InboxItem]], None]
"""Work done on the database thread inside an admission's transaction (the new items)."""

_COLUMNS = ("buffer_id", "platform", "bot_id", "chat_id", "message_id", "profile", "event", "received_at")
_QUARANTINE = (
    "INSERT OR IGNORE INTO inbox (buffer_id, platform, chat_id, message_id, event,"
    " received_at, status, turn_state, finished_at, error)"
    " VALUES (?, '', '', ?, ?, ?, 'rejected', 'undelivered', ?, ?)"
)


def event_text(event: dict[str, Any]) -> str:
    """``event`` as the JSON text kept in ``inbox.event``: msgspec (a tenth of
    ``json.dumps``' time), the stdlib for what msgspec refuses to encode. Inbound frames come
    from ``relay.protocol.framing.decode_line``, which marks every non-finite number it reads
    as ``NonFinite`` (msgspec refuses that type; it would write a plain ``float('nan')`` as
    ``null``), so the stored text reads back to the frame's values; a caller passing plain
    non-finite floats gets ``null`` for them."""
    try:
        return _encode(event).decode()
    except (TypeError, UnicodeEncodeError, OverflowError, RecursionError):
        return json.dumps(event)


def admit_rows(
    conn: sqlite3.Connection, frames: list[dict[str, Any]], now: float, in_tx: InTx | None = None
) -> Admission:
    """``InboxStore.admit``'s body, on the database thread inside the caller's transaction:
    each frame is checked on its own (a quarantined one never stops the batch), the usable ones
    are stored in multi-row statements (``insert_rows``, a GIL hand-off per 64 rows) and each
    counted as new or as a duplicate of a stored row (or of an earlier frame of the batch),
    then ``in_tx(conn, new)`` runs with the new items in the batch's order. Raises
    ``sqlite3.Error`` on a storage error (the caller rolls the whole batch back)."""
    out = Admission()
    rows: list[tuple[Any, ...]] = []
    events: list[dict[str, Any]] = []
    for frame in frames:
        bid = frame.get("bufferId")
        bid_text = None if bid is None else str(bid)
        rejected = check_frame(frame)
        if rejected is not None:
            if _quarantine(conn, frame, rejected, now):
                out.rejected.append(rejected)
            else:
                out.duplicates += 1
            continue
        ev = frame["event"]
        src = ev["source"]
        profile = src.get("profile")
        message_id = _id_text(ev.get("message_id"))
        if message_id is None:
            # No message id: the bufferId alone de-duplicates (a frame with neither cannot be
            # told apart from a resend, so it gets a fresh key).
            message_id = f"buffer:{bid_text}" if bid_text else f"local:{uuid.uuid4().hex}"
        rows.append(
            (
                bid_text,
                _id_text(src.get("platform")) or "",
                _id_text(src.get("bot_id")) or "",
                _id_text(src.get("chat_id")) or "",
                message_id,
                profile if isinstance(profile, str) else None,
                event_text(ev),
                now,
            )
        )
        events.append(ev)
    ids = insert_rows(conn, "inbox", _COLUMNS, rows, skip_conflicts=True)
    for item_id, row, ev in zip(ids, rows, events, strict=True):
        if item_id is None:
            out.duplicates += 1
            continue
        bid_text, platform, bot_id, chat_id, message_id, profile = row[:6]
        out.new.append(InboxItem(item_id, bid_text, platform, chat_id, message_id, profile, ev, bot_id))
    if out.new and in_tx is not None:
        in_tx(conn, out.new)
    return out


def _quarantine(conn: sqlite3.Connection, frame: dict[str, Any], why: Rejected, now: float) -> bool:
    """Keep an unusable frame as a ``rejected`` row; False if it was kept already."""
    bid = why.buffer_id
    key = f"rejected:{_safe(bid)}" if bid is not None else f"rejected:{uuid.uuid4().hex}"
    cur = conn.execute(
        _QUARANTINE,
        (None if bid is None else _safe(bid), key, json.dumps(frame, default=repr), now, now, why.error),
    )
    return cur.rowcount == 1


class InboxStore:
    """The ``inbox`` table of state.db.

    ``status``: pending -> running -> done | failed, or rejected (quarantined at admission).
    ``turn_state``: the turn's durable step (``TurnState``), advanced only through
    ``gateway.core.turn.transition`` so an illegal step raises ``TransitionError``.
    """

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def admit(
        self,
        frames: list[dict[str, Any]],
        now: float,
        in_tx: InTx | None = None,
    ) -> Admission:
        """Persist new inbound events (and quarantine unusable frames) in one durable
        transaction, in **one** hop to the database thread (``run_tx``: however many frames,
        one BEGIN IMMEDIATE ... COMMIT). ``now``: Unix seconds. ``in_tx(conn, new)`` runs on
        the database thread inside the same transaction (the sidecar creates the board tasks
        there: one commit, never a row without its task). Raises only on a storage error
        (nothing of the batch is then committed)."""
        return await run_tx(self.db, lambda conn: admit_rows(conn, frames, now, in_tx))

    async def unfinished(self) -> list[InboxItem]:
        """Pending and interrupted (running) items, oldest first: the work left by a restart."""
        rows = await read_all(
            self.db, f"SELECT {_COLS} FROM inbox WHERE status IN ('pending', 'running') ORDER BY id"
        )
        return [_item(r) for r in rows]

    async def get(self, item_id: int) -> InboxItem | None:
        """One item by id (None when there is none)."""
        r = await read_one(self.db, f"SELECT {_COLS} FROM inbox WHERE id = ?", (item_id,))
        return None if r is None else _item(r)

    async def rejected(self) -> list[dict[str, Any]]:
        """Quarantined rows (``id``, ``buffer_id``, ``error``, ``frame``), oldest first."""
        rows = await read_all(
            self.db, "SELECT id, buffer_id, error, event FROM inbox WHERE status = 'rejected' ORDER BY id"
        )
        return [{"id": r[0], "buffer_id": r[1], "error": r[2], "frame": json.loads(r[3])} for r in rows]

    # --- the turn's durable steps ------------------------------------------------------------

    async def turn(self, item_id: int) -> TurnRow | None:
        """The durable step of an item's turn (None when there is no such item)."""
        r = await read_one(
            self.db,
            "SELECT turn_state, chunks, chunks_sent, outcome, error, model_calls, answered_at"
            " FROM inbox WHERE id = ?",
            (item_id,),
        )
        if r is None:
            return None
        return TurnRow(
            TurnState(r[0]),
            None if r[1] is None else list(json.loads(r[1])),
            int(r[2]),
            r[3],
            r[4],
            int(r[5]),
            r[6],
        )

    async def start_answer(self, item_id: int, state: TurnState, now: float) -> None:
        """``received``/``answering`` -> ``answering``: a model call starts (counted)."""
        nxt = transition(state, TurnEvent.START)
        await write_one(
            self.db,
            "UPDATE inbox SET status = 'running', turn_state = ?, model_calls ="
            " model_calls + 1, started_at = COALESCE(started_at, ?) WHERE id = ?",
            (nxt.value, now, item_id),
        )

    async def commit_answer(
        self,
        item_id: int,
        state: TurnState,
        chunks: list[str],
        outcome: str,
        error: str | None,
        now: float,
        usage: TurnUsage | None = None,
    ) -> None:
        """-> ``answered``: the full answer (as the chunks to send) is durable before any send.
        ``outcome``: ``succeeded`` or why the answer is an apology/refusal; ``usage`` is what
        the model call used and cost (kept on the row for the day's spend)."""
        nxt = transition(state, TurnEvent.ANSWER)
        u = usage or TurnUsage("", "")
        await write_one(
            self.db,
            "UPDATE inbox SET status = 'running', turn_state = ?, chunks = ?,"
            " chunks_sent = 0, outcome = ?, error = ?, answered_at = ?,"
            " started_at = COALESCE(started_at, ?), model = ?, provider = ?, input_tokens = ?,"
            " output_tokens = ?, cost_usd = ?, answered_model = ? WHERE id = ?",
            (
                nxt.value,
                json.dumps(chunks),
                outcome,
                error,
                now,
                now,
                u.model or None,
                u.provider or None,
                u.input_tokens,
                u.output_tokens,
                u.cost_usd,
                u.answered_model,
                item_id,
            ),
        )

    async def chunk_sent(self, item_id: int, sent: int) -> None:
        """``sent`` chunks of the answer are confirmed (monotonic: never counts down)."""
        await write_one(
            self.db, "UPDATE inbox SET chunks_sent = MAX(chunks_sent, ?) WHERE id = ?", (sent, item_id)
        )

    async def finish(
        self,
        item_id: int,
        state: TurnState,
        event: TurnEvent,
        *,
        sent: int,
        ok: bool,
        error: str | None,
        now: float,
    ) -> None:
        """``answered`` -> ``delivered``/``undelivered``; the row is ``done`` when ``ok`` (the
        answer was the model's and every chunk is confirmed), else ``failed`` with ``error``."""
        nxt = transition(state, event)
        await write_one(
            self.db,
            "UPDATE inbox SET status = ?, turn_state = ?, chunks_sent = MAX(chunks_sent, ?),"
            " finished_at = ?, error = COALESCE(?, error) WHERE id = ?",
            ("done" if ok else "failed", nxt.value, sent, now, error, item_id),
        )


def _item(r: Any) -> InboxItem:
    return InboxItem(r[0], r[1], r[2], r[4], r[5], r[6], json.loads(r[7]), r[3] or "")
