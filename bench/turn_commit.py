"""What the answer-before-send commit costs per inbound turn (SPEC 8.1), on a real state.db.

Per turn, the durable writes of the turn state machine (``start_answer`` -> ``commit_answer``
with the whole answer -> ``finish``: three FULL commits) against the writes a turn made before
it existed (``running`` -> ``done``: two), in the same run on the same machine. The model call
and the send are left out: this is the cost the exactly-once guarantee adds to every turn.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import emit_rows
from common.sqlite import write_one
from gateway.core.turn import TurnEvent, TurnState
from gateway.inbox.store import InboxStore
from gateway.statedb import open_state_db

ANSWER = "An answer of a typical length. " * 20  # ~600 characters


async def _admit(store: InboxStore, n: int, offset: int) -> list[int]:
    frames = [
        {
            "type": "inbound",
            "bufferId": f"b{offset + i}",
            "event": {
                "text": "hi",
                "message_id": str(offset + i),
                "source": {"platform": "relay", "chat_id": "c", "user_id": "u"},
            },
        }
        for i in range(n)
    ]
    admission = await store.admit(frames, time.time())
    return [item.id for item in admission.new]


async def _old_turn(store: InboxStore, item_id: int) -> None:
    await write_one(
        store.db, "UPDATE inbox SET status = 'running', started_at = ? WHERE id = ?", (time.time(), item_id)
    )
    await write_one(
        store.db, "UPDATE inbox SET status = 'done', finished_at = ? WHERE id = ?", (time.time(), item_id)
    )


async def _new_turn(store: InboxStore, item_id: int) -> None:
    now = time.time()
    await store.start_answer(item_id, TurnState.RECEIVED, now)
    await store.commit_answer(item_id, TurnState.ANSWERING, [ANSWER], "succeeded", None, now)
    await store.finish(item_id, TurnState.ANSWERED, TurnEvent.DELIVER, sent=1, ok=True, error=None, now=now)


async def measure(turns: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_state_db(Path(tmp) / "state.db")
        store = InboxStore(db)
        old_ids = await _admit(store, turns, 0)
        new_ids = await _admit(store, turns, turns)
        old_t: list[float] = []
        new_t: list[float] = []
        for old_id, new_id in zip(old_ids, new_ids, strict=True):  # interleaved: same noise
            t0 = time.perf_counter()
            await _old_turn(store, old_id)
            t1 = time.perf_counter()
            await _new_turn(store, new_id)
            t2 = time.perf_counter()
            old_t.append(t1 - t0)
            new_t.append(t2 - t1)
        await db.close()
    old_ms = statistics.median(old_t) * 1000
    new_ms = statistics.median(new_t) * 1000
    return [
        {
            "figure": "turn durable writes, median ms",
            "ours": round(new_ms, 3),
            "baseline": round(old_ms, 3),
            "ratio": round(new_ms / old_ms, 2),
            "goal": "one FULL commit more",
            "met": new_ms / old_ms <= 2.0,
        },
        {
            "figure": "answer-before-send commit, ms/turn",
            "ours": round(new_ms - old_ms, 3),
            "baseline": None,
            "ratio": None,
            "goal": "report",
            "met": True,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    emit_rows(asyncio.run(measure(200 if args.quick else 2000)), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
