"""What a schedule left behind, read from its files after the run, and the invariants of
SPEC 8.4: every accepted message answered exactly once (a confirmed send in the connector's
outbox), nothing buffered or unfinished, no illegal state transition."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import TransitionError

REPLY = re.compile(r"^re:(m\d+)$")
"""The simulated provider answers ``m:<id>`` with ``re:<id>``; an apology names no message."""


@dataclass
class Verdict:
    """What one schedule did (``faults`` by kind, ``accepted`` and ``answered`` messages, the
    virtual seconds it ran, its ``trace``) and each broken promise, one line each."""

    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    answered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    stranded: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    virtual_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.stranded or self.violations)


class TransitionCapture(logging.Handler):
    """A root log handler that turns every logged ``TransitionError`` into a violation."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(logging.ERROR)
        self.verdict = verdict

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TransitionError):
            self.verdict.violations.append(f"illegal transition: {exc}")


def _read(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def answers(relay_db: Path) -> list[tuple[str, str]]:
    """``(chat id, text)`` of every send in the connector's outbox, in order."""
    if not relay_db.exists():
        return []
    with closing(_read(relay_db)) as db:
        rows = db.execute("SELECT chat_id, action FROM outbox ORDER BY seq").fetchall()
    out = []
    for chat, raw in rows:
        action = json.loads(raw)  # a send carries ``content`` (``text`` in older rows)
        out.append((chat, str(action.get("content", action.get("text", "")))))
    return out


def leftovers(relay_db: Path, state_db: Path) -> list[str]:
    """Work not done: unacked buffer entries, inbox items not finished or whose turn is not
    delivered/undelivered, board tasks still running."""
    out = []
    if relay_db.exists():
        with closing(_read(relay_db)) as db:
            n = db.execute("SELECT count(*) FROM buffer WHERE acked_at IS NULL").fetchone()[0]
            if n:
                out.append(f"{n} unacked entr(ies) in the connector buffer")
    if state_db.exists():
        with closing(_read(state_db)) as db:
            for status, state, count in db.execute(
                "SELECT status, turn_state, count(*) FROM inbox"
                " WHERE status IN ('pending', 'running')"
                " OR turn_state NOT IN ('delivered', 'undelivered')"
                " GROUP BY status, turn_state"
            ):
                out.append(f"{count} inbox item(s) {status}/{state}")
            (running,) = db.execute("SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()
            if running:
                out.append(f"{running} board task(s) left running")
    return out


def judge(v: Verdict, accepted: dict[str, str], relay_db: Path, state_db: Path) -> None:
    """Fill ``v``'s counts and broken promises from the files. ``accepted`` maps each message
    id the connector accepted to its chat. Per chat, sends must equal accepted messages (an
    apology counts: it names no message); per message, ``re:<id>`` at most once."""
    v.accepted = len(accepted)
    replies = Counter[str]()
    per_chat = Counter[str]()
    for chat, text in answers(relay_db):
        per_chat[chat] += 1
        m = REPLY.match(text)
        if m:
            replies[m.group(1)] += 1
    for mid in sorted(accepted):
        if replies[mid] > 1:
            v.duplicated.append(f"{mid}: answered {replies[mid]} times")
    expected = Counter(accepted.values())
    for chat in sorted(set(expected) | set(per_chat)):
        sent, want = per_chat[chat], expected[chat]
        if sent > want:
            v.duplicated.append(f"chat {chat}: {sent} sends for {want} message(s)")
        elif sent < want:
            v.lost.append(f"chat {chat}: {sent} sends for {want} message(s)")
    v.answered = min(sum(per_chat.values()), len(accepted))
    v.stranded.extend(leftovers(relay_db, state_db))
