"""The PostgreSQL store's group commit under concurrency: appends made by two instances at once
reach a reader in commit order (a cursor never passes an entry that commits later), whatever
groups they fall into, and no two groups deadlock on the gateways' append locks."""

from __future__ import annotations

import asyncio

import asyncpg

from relay.connector.pg.store import PgStore
from relay.connector.pg.writer import APPEND_SQL, gateway_lock_key

PER_STORE = 300
GATEWAYS = ("gw-a", "gw-b", "gw-c")


async def _append(store: PgStore, buffer_id: str, gateway_id: str, now: float) -> None:
    """Append the entry ``buffer_id`` (its frame is ``"<buffer_id>\\n"``) to a relay gateway."""
    await store.append(
        buffer_id=buffer_id,
        gateway_id=gateway_id,
        platform="relay",
        bot_id="",
        chat_id="42",
        frame=f"{buffer_id}\n",
        now=now,
    )


async def _until(con: asyncpg.Connection, count_sql: str) -> None:
    """Poll ``count_sql`` on ``con`` until it counts something (30 s at most)."""
    async with asyncio.timeout(30):
        while True:
            if await con.fetchval(count_sql):
                return
            await asyncio.sleep(0.01)


async def _append_many(store: PgStore, tag: str) -> None:
    gateways = [GATEWAYS[i % len(GATEWAYS)] for i in range(PER_STORE)]
    await asyncio.gather(*(_append(store, f"{tag}{i}", gid, 1e9 + i) for i, gid in enumerate(gateways)))


async def test_entries_appended_by_two_instances_reach_a_cursor_reader_without_a_gap(pg_url: str) -> None:
    """A sender reads each gateway's entries past its cursor while two stores append to the
    same gateways in many concurrent groups; once the appends are done, one more read finds
    nothing new. Every entry was read exactly once: an entry whose seq was drawn before a later
    one's but committed after the reader moved past it would be missing."""
    a, b = await PgStore.open(pg_url), await PgStore.open(pg_url)
    seen: dict[str, list[str]] = {gid: [] for gid in GATEWAYS}
    appending = True

    async def reader(gid: str) -> None:
        cursor = 0
        while True:
            last_round = not appending
            rows = await a.unacked_after(gid, cursor, 1000)
            for seq, frame in rows:
                seen[gid].append(frame)
                cursor = seq
            if last_round and not rows:
                return
            await asyncio.sleep(0)

    try:
        readers = [asyncio.create_task(reader(gid)) for gid in GATEWAYS]
        await asyncio.wait_for(asyncio.gather(_append_many(a, "a"), _append_many(b, "b")), 60)
        appending = False
        await asyncio.wait_for(asyncio.gather(*readers), 60)
    finally:
        await a.close()
        await b.close()
    for i, gid in enumerate(GATEWAYS):
        expected = {f"{tag}{n}\n" for tag in "ab" for n in range(i, PER_STORE, len(GATEWAYS))}
        assert len(seen[gid]) == len(expected)
        assert set(seen[gid]) == expected


async def test_an_append_waits_for_the_gateway_lock_another_instance_holds(pg_url: str) -> None:
    """Another instance in the middle of appending to a gateway (its transaction holds the
    gateway's append lock and has drawn a seq) makes this store's append to that gateway wait
    until it commits, so the later seq commits later: a sender's cursor can never pass it."""
    store = await PgStore.open(pg_url)
    other = await asyncpg.connect(pg_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT pg_advisory_xact_lock($1)", gateway_lock_key("gw"))
        await other.execute(APPEND_SQL, "first", "gw", "relay", "", "42", "first\n", 1.0)
        append = asyncio.create_task(_append(store, "second", "gw", 2.0))
        # until the append is seen waiting for the lock
        await _until(other, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        assert not append.done()
        assert await store.unacked_after("gw", 0, 10) == []
        await tx.commit()
        await asyncio.wait_for(append, 30)
        assert [frame for _, frame in await store.unacked_after("gw", 0, 10)] == ["first\n", "second\n"]
    finally:
        await other.close()
        await store.close()


async def test_a_flip_commits_only_after_the_acks_sent_before_it(pg_url: str) -> None:
    """Acks have a writer lane of their own on PostgreSQL; a gateway's flip (it acked what it
    got, then said going_idle) must still never commit before those acks: a restart or another
    instance reading a flip with unacked entries pokes the sleeping sidecar and replays for
    nothing. Here another transaction holds the entry's row, so the ack waits."""
    store = await PgStore.open(pg_url)
    other = await asyncpg.connect(pg_url)
    try:
        await _append(store, "e1", "gw", 1.0)
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM buffer WHERE buffer_id = 'e1' FOR UPDATE")
        store.ack("gw", "e1", 2.0)
        flip = asyncio.create_task(store.set_flip("gw", True, None, 3.0))
        # until the ack is seen waiting for the row
        await _until(other, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        # A write on the main lane queued now commits after anything queued there before it.
        await _append(store, "e3", "gw2", 4.0)
        assert not flip.done()
        await tx.rollback()
        await asyncio.wait_for(flip, 30)
        row = await other.fetchrow(
            "SELECT b.acked_at, g.flipped FROM buffer b JOIN gateways g USING (gateway_id)"
            " WHERE b.buffer_id = 'e1'"
        )
        assert row is not None
        assert row["acked_at"] == 2.0
        assert row["flipped"] is True
    finally:
        await other.close()
        await store.close()
