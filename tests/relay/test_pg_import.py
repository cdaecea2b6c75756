"""Moving a connector from SQLite to PostgreSQL: ``--import-sqlite`` copies everything the file
holds (unacked entries in order, flip state and wake URLs, identities, idempotency keys, queued
Telegram sends, seen update ids, the outbox) in one transaction, once, and renames the file."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest

from common.clock import FakeClock
from relay.connector.server import Connector
from relay.connector.store import BufferStore
from relay.connector.store_api import StoreOpenError

T0 = 1_800_000_000.0


async def _sqlite_connector(path: Path) -> None:
    """A SQLite connector database with something in every table."""
    store = await BufferStore.open(str(path))
    try:
        await store.remember("gw", "telegram", "bot1", "https://gw.example/wake", T0)
        await store.set_flip("gw", True, T0 + 3600, T0)
        for i in range(5):
            await store.append(
                buffer_id=f"b{i}",
                gateway_id="gw",
                platform="telegram",
                bot_id="bot1",
                chat_id="c1",
                frame=f'{{"type":"inbound","n":{i}}}\n',
                now=T0 + i,
                telegram_update=("bot1", 100 + i),
            )
        store.ack_many("gw", ["b0", "b1"], T0 + 10)
        await store.record_outbound(
            gateway_id="gw",
            platform="relay",
            bot_id="",
            action={"op": "send", "chat_id": "42", "content": "kept"},
            now=T0,
            idempotency_key="k1",
            result={"success": True, "message_id": "m1"},
        )
        await store.record_outbound(
            gateway_id="gw",
            platform="telegram",
            bot_id="bot1",
            action={"op": "send", "chat_id": "c1", "content": "queued"},
            now=T0,
            platform_send=("s1", "req-1"),
        )
        await store.flush()
    finally:
        await store.close()


async def test_import_copies_every_table_once_and_renames_the_file(tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "relay.db"
    await _sqlite_connector(path)
    keep = tmp_path / "copy.db"
    shutil.copy(path, keep)
    connector = await Connector.create(pg_url, import_sqlite=str(path), clock=FakeClock(wall=T0 + 20))
    try:
        store = connector.store
        assert [frame for _, frame in await store.unacked_after("gw", 0, 100)] == [
            f'{{"type":"inbound","n":{i}}}\n' for i in (2, 3, 4)
        ]
        gateways = await store.gateways()
        assert (gateways["gw"].wake_url, gateways["gw"].flipped, gateways["gw"].wake_at) == (
            "https://gw.example/wake",
            True,
            T0 + 3600,
        )
        assert connector.routes[("telegram", "bot1")] == "gw"
        assert await store.idempotent_result("gw", "k1") == {"success": True, "message_id": "m1"}
        (queued,) = await store.pending_platform_sends("telegram", "bot1")
        assert (queued.send_id, queued.request_id, queued.action["content"]) == ("s1", "req-1", "queued")
        assert await store.update_seen("bot1", 104)
        assert [r["action"]["content"] for r in await store.outbox()] == ["kept", "queued"]
        assert not path.exists()
        assert (tmp_path / "relay.db.imported").exists()
    finally:
        await connector.close()
    # A restart that finds the file again (killed between the commit and the rename) copies
    # nothing twice: it only renames.
    shutil.copy(keep, path)
    again = await Connector.create(pg_url, import_sqlite=str(path), clock=FakeClock(wall=T0 + 30))
    try:
        assert len(await again.store.outbox()) == 2
        assert len(await again.store.unacked_after("gw", 0, 100)) == 3
        assert not path.exists()
    finally:
        await again.close()


async def test_no_file_means_nothing_to_import(tmp_path: Path, pg_url: str) -> None:
    connector = await Connector.create(pg_url, import_sqlite=str(tmp_path / "absent.db"))
    try:
        assert await connector.store.gateways() == {}
    finally:
        await connector.close()


async def test_a_file_that_is_no_connector_database_stops_the_start_naming_it(
    tmp_path: Path, pg_url: str
) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite")
    with pytest.raises(StoreOpenError, match=r"--import-sqlite .*notes\.db"):
        await Connector.create(pg_url, import_sqlite=str(path))
    assert path.exists()  # never renamed: nothing was imported


async def test_a_file_changed_since_its_import_brings_only_what_is_new(tmp_path: Path, pg_url: str) -> None:
    """Import, roll back to SQLite (the file renamed back) and take one more message there, then
    move again: the new entry arrives, nothing is doubled (outbox included), and the first
    import's renamed file is kept beside the second's."""
    path = tmp_path / "relay.db"
    await _sqlite_connector(path)
    first = await Connector.create(pg_url, import_sqlite=str(path))
    await first.close()
    shutil.copy(tmp_path / "relay.db.imported", path)  # a rollback that kept the backup
    store = await BufferStore.open(str(path))
    await store.append(
        buffer_id="late",
        gateway_id="gw",
        platform="relay",
        bot_id="",
        chat_id="c1",
        frame="late\n",
        now=T0 + 50,
    )
    await store.close()
    again = await Connector.create(pg_url, import_sqlite=str(path))
    try:
        frames = [frame for _, frame in await again.store.unacked_after("gw", 0, 100)]
        assert frames[-1] == "late\n"
        assert len(frames) == 4
        assert len(await again.store.outbox()) == 2
        assert (tmp_path / "relay.db.imported").exists()  # never overwritten
        assert (tmp_path / "relay.db.imported.1").exists()
    finally:
        await again.close()


async def test_the_import_tells_other_instances(tmp_path: Path, pg_url: str) -> None:
    """An instance already serving from the database hears the imported route and wake URL."""
    other = await Connector.create(pg_url)
    try:
        path = tmp_path / "relay.db"
        await _sqlite_connector(path)
        importer = await Connector.create(pg_url, import_sqlite=str(path))
        try:
            for _ in range(200):
                if other.routes.get(("telegram", "bot1")) == "gw":
                    break
                await asyncio.sleep(0.01)  # LISTEN/NOTIFY crosses a real server: poll briefly
            assert other.routes[("telegram", "bot1")] == "gw"
            assert other.wake_urls["gw"] == "https://gw.example/wake"
        finally:
            await importer.close()
    finally:
        await other.close()


async def test_no_pooled_connection_keeps_a_lock_after_the_import(tmp_path: Path, pg_url: str) -> None:
    """The store's pool hands connections back without asyncpg's reset query (a round trip per
    group commit), so nothing may leave session state on them: the import's session lock lives
    and dies with a connection of its own, and every pooled one holds no advisory lock."""
    path = tmp_path / "relay.db"
    await _sqlite_connector(path)
    connector = await Connector.create(pg_url, import_sqlite=str(path), clock=FakeClock(wall=T0 + 20))
    try:
        pool = connector.store.pool  # type: ignore[attr-defined]
        async with contextlib.AsyncExitStack() as stack:
            cons = [await stack.enter_async_context(pool.acquire()) for _ in range(pool.get_size())]
            held = [
                await con.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                )
                for con in cons
            ]
        assert cons
        assert held == [0] * len(cons)
        assert (tmp_path / "relay.db.imported").exists()
    finally:
        await connector.close()
