"""What conversation history costs a turn (SPEC 8.2), on a real state.db.

The sidecar's own time per turn, without the model call or the send: open the chat's session,
store the user message, read the history, build the request, commit the answer and store it in
history. Measured with 20 exchanges of history against the same turn in a chat without
history, in one run; then again with 1,000 other sessions of 200 messages each stored (the
history read must use an index, not a scan).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import emit_rows, pct
from common.sqlite import write_tx
from gateway.config import Config
from gateway.conversation.history import build_request, select_history
from gateway.conversation.store import SessionKey, SessionStore
from gateway.core.turn import TurnState
from gateway.inbox.store import InboxStore
from gateway.statedb import open_state_db

TEXT = "A message of an ordinary length, about one line of chat. " * 2


async def _fill(store: SessionStore, inbox_base: int, sessions: int, messages: int) -> None:
    """``sessions`` other chats of ``messages`` messages each, written in bulk."""
    db = store.db
    async with write_tx(db):
        for s in range(sessions):
            cur = await db.execute(
                "INSERT INTO sessions (platform, bot_id, chat_id, thread_id, created_at, last_at)"
                " VALUES ('relay', '', ?, '', 0, 0)",
                (f"other{s}",),
            )
            sid = cur.lastrowid
            rows = [
                (
                    sid,
                    inbox_base + s * messages + m,
                    "user" if m % 2 == 0 else "assistant",
                    TEXT,
                    float(m),
                    30,
                )
                for m in range(messages)
            ]
            await db.executemany(
                "INSERT INTO session_messages (session_id, inbox_id, role, content, at, tokens)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )


async def _turn(inbox: InboxStore, store: SessionStore, config: Config, chat: str, n: int) -> float:
    """One turn's own work in ``chat``; seconds."""
    frame = {
        "type": "inbound",
        "bufferId": f"{chat}-{n}",
        "event": {
            "text": TEXT,
            "message_id": f"{chat}-{n}",
            "source": {"platform": "relay", "chat_id": chat, "user_id": "u"},
        },
    }
    item = (await inbox.admit([frame], time.time())).new[0]
    t0 = time.perf_counter()
    now = time.time()
    session = await store.current(SessionKey("relay", "", chat), now, config.session_reset)
    await store.add_message(session.id, item.id, "user", TEXT, now)
    past = await store.messages(session.id)
    build_request(
        "You are Hermes.", select_history(past, config.history_max_turns, config.context_max_tokens), TEXT
    )
    await inbox.start_answer(item.id, TurnState.RECEIVED, now)
    await inbox.commit_answer(item.id, TurnState.ANSWERING, ["an answer"], "succeeded", None, now)
    await store.add_message(session.id, item.id, "assistant", "an answer", now)
    return time.perf_counter() - t0


async def _measure(turns: int, big: bool) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_state_db(Path(tmp) / "state.db")
        inbox, store = InboxStore(db), SessionStore(db)
        config = Config(home=Path(tmp))
        if big:
            await _fill(store, 10**13, 1000, 200)
        for i in range(20):  # 20 exchanges of history in chat "h"
            await _turn(inbox, store, config, "h", i)
        with_h, without = [], []
        for i in range(turns):  # interleaved: the same noise for both
            with_h.append(await _turn(inbox, store, config, "h", 100 + i))
            await store.reset(SessionKey("relay", "", "fresh"), time.time())
            without.append(await _turn(inbox, store, config, "fresh", i))
        await db.close()
    return with_h, without


async def measure(turns: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for big, label, goal in ((False, "20 exchanges", 1.0), (True, "20 exchanges, 1,000x200 stored", 5.0)):
        with_h, without = await _measure(turns, big)
        p50, base = statistics.median(with_h) * 1000, statistics.median(without) * 1000
        rows.append(
            {
                "figure": f"turn own time p50 ms ({label})",
                "ours": round(p50, 3),
                "baseline": round(base, 3),
                "ratio": round(p50 / base, 2),
                "goal": f"history adds <= {goal:g} ms",
                "met": p50 - base <= goal,
            }
        )
        rows.append(
            {
                "figure": f"turn own time p99 ms ({label})",
                "ours": round(pct(with_h, 0.99) * 1000, 3),
                "baseline": round(pct(without, 0.99) * 1000, 3),
                "ratio": None,
                "goal": "report",
                "met": True,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    emit_rows(asyncio.run(measure(50 if args.quick else 300)), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
