"""Reads of the connector store survive a cancelled reader (found by the kill -9 e2e trials: a
replay that silently missed committed entries)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from relay.connector.store import BufferStore


async def test_a_cancelled_replay_read_never_freezes_later_reads(tmp_path: Path) -> None:
    """A sender cancelled mid-read (its socket dropped) must not leave the read connection in
    an old snapshot: entries committed afterwards are seen by the next replay."""
    store = await BufferStore.open(str(tmp_path / "relay.db"))
    try:
        for i in range(30):
            reader = asyncio.create_task(store.unacked_after("gw", 0, 2000))
            await asyncio.sleep(0)  # the query is on its way to the database thread
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await store.append(
                buffer_id=f"b{i}",
                gateway_id="gw",
                platform="relay",
                bot_id="",
                chat_id="c",
                frame=f'{{"type":"inbound","n":{i}}}\n',
                now=0.0,
            )
            seen = [seq for seq, _ in await store.unacked_after("gw", 0, 2000)]
            assert len(seen) == i + 1, f"entry {i} committed but not seen"
    finally:
        await store.close()
