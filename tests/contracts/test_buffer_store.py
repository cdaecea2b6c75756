"""Connector store contract (``relay/connector/store_api.py``), run on every backend of
``buffer_store`` (SQLite and PostgreSQL).

Reads see only committed rows, except acks: a received ack counts at once, before its commit.
Writes that are not awaited (``ack``, ``clear_flip``) are checked after ``flush``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relay.connector.store import GatewayRecord
from relay.connector.store_api import INTEGRITY_ERRORS
from relay.connector.store_api import ConnectorStore as BufferStore

T0 = 1_714_557_600.0  # 2024-05-01 10:00 UTC


@pytest.fixture
def store(buffer_store: BufferStore) -> BufferStore:
    return buffer_store


async def append(store: BufferStore, buffer_id: str, gateway_id: str = "gw1", chat_id: str = "c1") -> None:
    await store.append(
        buffer_id=buffer_id,
        gateway_id=gateway_id,
        platform="telegram",
        bot_id="bot1",
        chat_id=chat_id,
        frame=f"frame-{buffer_id}",
        now=T0,
    )


# --- buffer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "limit", "expected"),
    [
        (0, 100, ["a", "b", "c"]),
        (0, 2, ["a", "b"]),
        ("a", 100, ["b", "c"]),
        ("c", 100, []),
    ],
    ids=["all", "limited", "after-first", "after-last"],
)
async def test_buffer_unacked_after_in_seq_order(
    store: BufferStore, after: int | str, limit: int, expected: list[str]
) -> None:
    """unacked_after gives (seq, frame) of one gateway past after_seq, oldest first, up to limit."""
    for bid in ("a", "x", "b", "c"):
        await append(store, bid, gateway_id="gw2" if bid == "x" else "gw1")
    seqs = {r["buffer_id"]: r["seq"] for r in await store.buffer_rows()}
    after_seq = seqs[after] if isinstance(after, str) else after
    got = await store.unacked_after("gw1", after_seq, limit)
    assert got == [(seqs[b], f"frame-{b}") for b in expected]
    assert await store.unacked_count("gw1") == 3
    assert await store.unacked_count("nobody") == 0


async def test_buffer_append_duplicate_buffer_id_fails(store: BufferStore) -> None:
    """buffer_id is unique: a second append with it raises IntegrityError and stores nothing."""
    await append(store, "a")
    with pytest.raises(INTEGRITY_ERRORS):
        await append(store, "a", gateway_id="gw2")
    assert [r["buffer_id"] for r in await store.buffer_rows()] == ["a"]


@pytest.mark.parametrize("flushed", [False, True], ids=["in-flight", "committed"])
async def test_buffer_ack_counts_at_once(store: BufferStore, flushed: bool) -> None:
    """An ack hides its entry from unacked_after and unacked_count before and after it commits."""
    for bid in ("a", "b", "c"):
        await append(store, bid)
    store.ack("gw1", "b", T0 + 1)
    if flushed:
        await store.flush()
    assert [frame for _, frame in await store.unacked_after("gw1", 0, 100)] == ["frame-a", "frame-c"]
    assert await store.unacked_count("gw1") == 2
    await store.flush()  # whenever the ack commits, the rows then agree with the reads
    acked = {r["buffer_id"]: r["acked"] for r in await store.buffer_rows()}
    assert acked == {"a": False, "b": True, "c": False}


async def test_buffer_ack_twice_and_unknown_are_harmless(store: BufferStore) -> None:
    """Acking an entry twice, or an id never appended, changes nothing else."""
    await append(store, "a")
    await append(store, "b")
    store.ack("gw1", "a", T0 + 1)
    store.ack("gw1", "a", T0 + 2)
    store.ack("gw1", "ghost", T0 + 2)
    await store.flush()
    assert [f for _, f in await store.unacked_after("gw1", 0, 100)] == ["frame-b"]
    assert await store.unacked_count("gw1") == 1


async def test_buffer_ack_of_another_gateway_acks_nothing(store: BufferStore) -> None:
    """An ack names its gateway: once committed, another gateway's entry is still unacked."""
    await append(store, "a", gateway_id="gw1")
    store.ack("gw2", "a", T0 + 1)
    await store.flush()
    assert await store.unacked_count("gw1") == 1
    assert [f for _, f in await store.unacked_after("gw1", 0, 100)] == ["frame-a"]


async def test_buffer_append_marks_telegram_update_seen(store: BufferStore) -> None:
    """append with telegram_update marks (bot, update_id) seen in the same commit."""
    assert not await store.update_seen("bot1", 7)
    await store.append(
        buffer_id="a",
        gateway_id="gw1",
        platform="telegram",
        bot_id="bot1",
        chat_id="c1",
        frame="f",
        now=T0,
        telegram_update=("bot1", 7),
    )
    assert await store.update_seen("bot1", 7)
    assert not await store.update_seen("bot1", 8)
    assert not await store.update_seen("bot2", 7)


# --- gateways and identities ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("calls", "identities", "wake_urls"),
    [
        ([("gw1", "bot1", "http://a")], {("telegram", "bot1"): "gw1"}, {"gw1": "http://a"}),
        (
            [("gw1", "bot1", "http://a"), ("gw1", "bot1", None)],
            {("telegram", "bot1"): "gw1"},
            {"gw1": "http://a"},
        ),
        (
            [("gw1", "bot1", "http://a"), ("gw1", "bot1", "http://b")],
            {("telegram", "bot1"): "gw1"},
            {"gw1": "http://b"},
        ),
        (
            [("gw1", "bot1", "http://a"), ("gw2", "bot1", None)],
            {("telegram", "bot1"): "gw2"},
            {"gw1": "http://a", "gw2": None},
        ),
        (
            [("gw1", "bot1", None), ("gw1", "bot2", None)],
            {("telegram", "bot1"): "gw1", ("telegram", "bot2"): "gw1"},
            {"gw1": None},
        ),
    ],
    ids=["first", "no-url-keeps-old", "new-url-wins", "bot-moves-gateway", "two-bots-one-gateway"],
)
async def test_buffer_remember_identities_and_gateways(
    store: BufferStore,
    calls: list[tuple[str, str, str | None]],
    identities: dict[tuple[str, str], str],
    wake_urls: dict[str, str | None],
) -> None:
    """remember maps (platform, bot) to its latest gateway and keeps a gateway's last known wake URL."""
    for i, (gw, bot, url) in enumerate(calls):
        await store.remember(gw, "telegram", bot, url, T0 + i)
    assert await store.identities() == identities
    gateways = await store.gateways()
    assert {g: r.wake_url for g, r in gateways.items()} == wake_urls
    assert not any(r.flipped for r in gateways.values())


async def test_buffer_set_flip_and_clear_flip(store: BufferStore) -> None:
    """set_flip stores flipped and wakeAt (creating the gateway); remember keeps them; clear_flip resets."""
    assert await store.gateways() == {}
    await store.set_flip("gw1", True, T0 + 60, T0)
    assert await store.gateways() == {"gw1": GatewayRecord("gw1", None, True, T0 + 60)}
    await store.remember("gw1", "telegram", "bot1", "http://a", T0 + 1)
    assert await store.gateways() == {"gw1": GatewayRecord("gw1", "http://a", True, T0 + 60)}
    await store.set_flip("gw1", True, None, T0 + 2)
    assert (await store.gateways())["gw1"].wake_at is None
    store.clear_flip("gw1", T0 + 3)
    store.clear_flip("unknown", T0 + 3)  # no gateway row: nothing to clear
    await store.flush()
    assert await store.gateways() == {"gw1": GatewayRecord("gw1", "http://a", False, None)}


# --- outbox and idempotency ----------------------------------------------------------------


def _send(store: BufferStore, chat: Any, text: str, **kw: Any) -> asyncio.Future[None]:
    action = (
        {"type": "send", "text": text} if chat is None else {"type": "send", "chat_id": chat, "text": text}
    )
    return store.record_outbound(
        gateway_id="gw1", platform="telegram", bot_id="bot1", action=action, now=T0, **kw
    )


@pytest.mark.parametrize(
    ("chat", "expected"),
    [(None, ["1", "2", "3", "4"]), ("42", ["1", "3"]), ("7", ["2"]), ("nobody", [])],
    ids=["all", "chat-42", "int-chat-id-as-text", "unknown-chat"],
)
async def test_buffer_outbox_in_call_order(store: BufferStore, chat: str | None, expected: list[str]) -> None:
    """record_outbound rows come back in call order, filtered by chat_id (an int chat id matches its text)."""
    futs = [_send(store, "42", "1"), _send(store, 7, "2"), _send(store, "42", "3"), _send(store, None, "4")]
    await asyncio.gather(*futs)
    rows = await store.outbox(chat)
    assert [r["action"]["text"] for r in rows] == expected
    assert all(
        (r["gateway_id"], r["platform"], r["bot_id"], r["at"]) == ("gw1", "telegram", "bot1", T0)
        for r in rows
    )


async def test_buffer_idempotent_result_stored_with_its_outbox_row(store: BufferStore) -> None:
    """A key's result is readable once its outbox row committed; other keys and gateways have none."""
    await _send(store, "42", "hi", idempotency_key="k1", result={"ok": True, "message_id": 5})
    assert await store.idempotent_result("gw1", "k1") == {"ok": True, "message_id": 5}
    assert await store.idempotent_result("gw1", "k2") is None
    assert await store.idempotent_result("gw2", "k1") is None
    assert len(await store.outbox()) == 1


async def test_buffer_record_outbound_key_needs_result(store: BufferStore) -> None:
    """An idempotency_key without its result is a ValueError and queues nothing."""
    with pytest.raises(ValueError, match="needs its result"):
        _send(store, "42", "hi", idempotency_key="k1")
    await store.flush()
    assert await store.outbox() == []


async def test_buffer_record_outbound_same_key_twice_fails_whole_job(store: BufferStore) -> None:
    """A key stored already fails the second job with IntegrityError: neither its row nor its result lands."""
    await _send(store, "42", "first", idempotency_key="k1", result={"n": 1})
    with pytest.raises(INTEGRITY_ERRORS):
        await _send(store, "42", "second", idempotency_key="k1", result={"n": 2})
    assert [r["action"]["text"] for r in await store.outbox()] == ["first"]
    assert await store.idempotent_result("gw1", "k1") == {"n": 1}


async def test_buffer_failed_job_leaves_other_queued_jobs_committed(store: BufferStore) -> None:
    """A job that fails (duplicate key) fails alone: writes queued beside it still commit."""
    await append(store, "a")
    await _send(store, "42", "first", idempotency_key="k1", result={"n": 1})
    # queued with no await in between, so the writer takes all three in one group
    store.ack("gw1", "a", T0 + 1)
    dup = _send(store, "42", "dup", idempotency_key="k1", result={"n": 2})
    other = _send(store, "9", "other")
    results = await asyncio.gather(dup, other, return_exceptions=True)
    assert isinstance(results[0], INTEGRITY_ERRORS)
    assert results[1] is None
    assert [r["action"]["text"] for r in await store.outbox()] == ["first", "other"]
    assert [r["acked"] for r in await store.buffer_rows()] == [True]


@pytest.mark.parametrize(
    ("keys_before", "kept"),
    [(T0, ["k0", "k1"]), (T0 + 1, ["k1"]), (T0 + 2, [])],
    ids=["at-oldest", "between", "after-newest"],
)
async def test_buffer_prune_forgets_idempotency_keys_before_keys_before(
    store: BufferStore, keys_before: float, kept: list[str]
) -> None:
    """prune forgets keys stored strictly before ``keys_before``, whatever ``before`` says."""
    for i in range(2):
        await store.record_outbound(
            gateway_id="gw1",
            platform="telegram",
            bot_id="bot1",
            action={"chat_id": "42", "text": str(i)},
            now=T0 + i,
            idempotency_key=f"k{i}",
            result={"n": i},
        )
    await store.prune(T0 - 1, keys_before)
    assert [k for k in ("k0", "k1") if await store.idempotent_result("gw1", k) is not None] == kept
    assert len(await store.outbox()) == 2


async def test_buffer_prune_keeps_what_is_still_needed(store: BufferStore) -> None:
    """Old acked entries, old outbox rows, old seen update ids and old finished sends go; an
    old entry still unacked, an old send still queued and everything younger stay."""
    day = 86400.0
    for bid, at in (("old-acked", T0), ("old-unacked", T0), ("young-acked", T0 + 9 * day)):
        await store.append(
            buffer_id=bid,
            gateway_id="gw1",
            platform="telegram",
            bot_id="bot1",
            chat_id="c1",
            frame=f"frame-{bid}",
            now=at,
            telegram_update=("bot1", 1 if bid == "old-acked" else 2 if bid == "old-unacked" else 3),
        )
    store.ack("gw1", "old-acked", T0 + 1)
    store.ack("gw1", "young-acked", T0 + 9 * day)
    for name, at in (("old", T0), ("young", T0 + 9 * day)):
        await store.record_outbound(
            gateway_id="gw1",
            platform="relay",
            bot_id="",
            action={"chat_id": "42", "text": name},
            now=at,
        )
    await asyncio.gather(_queue(store, "done-old", "a"), _queue(store, "queued-old", "b"))
    (done, _) = await store.pending_platform_sends("telegram", "bot1")
    await store.finish_platform_send(done, {"success": True}, T0 + 2)
    await store.flush()
    await store.prune(T0 + 8 * day, T0 + 8 * day)
    rows = await store.buffer_rows()
    assert [(r["buffer_id"], r["acked"]) for r in rows] == [("old-unacked", False), ("young-acked", True)]
    assert [r["action"]["text"] for r in await store.outbox()] == ["young"]
    assert [await store.update_seen("bot1", u) for u in (1, 2, 3)] == [False, False, True]
    assert await store.platform_send("done-old") is None
    queued = await store.platform_send("queued-old")
    assert queued is not None
    assert not queued.done
    assert await store.unacked_count("gw1") == 1


async def test_buffer_ack_many_acks_each_entry_of_its_gateway(store: BufferStore) -> None:
    """A batched ack (PROTOCOL.md 7.3) hides its entries at once and commits them all; an id
    of another gateway or never appended changes nothing."""
    for bid in ("a", "b", "c"):
        await append(store, bid)
    await append(store, "d", gateway_id="gw2")
    store.ack_many("gw1", ["a", "c", "d", "ghost"], T0 + 1)
    assert [f for _, f in await store.unacked_after("gw1", 0, 100)] == ["frame-b"]
    await store.flush()
    acked = {r["buffer_id"]: r["acked"] for r in await store.buffer_rows()}
    assert acked == {"a": True, "b": False, "c": True, "d": False}
    assert await store.unacked_count("gw2") == 1


async def test_buffer_one_group_of_many_appends_and_acks_keeps_each_ones_effect(store: BufferStore) -> None:
    """150 appends queued at once (one group: multi-row statements on SQLite) with a
    duplicate among them, then acks of two gateways at two times: the duplicate alone fails,
    every other entry is stored in order, and each ack marks only its own gateway's entry."""
    await append(store, "dup")
    appends = [append(store, f"e{i}", gateway_id="gw2" if i % 3 == 0 else "gw1") for i in range(150)]
    appends.insert(70, append(store, "dup"))
    results = await asyncio.gather(*appends, return_exceptions=True)
    assert [i for i, r in enumerate(results) if r is not None] == [70]
    assert isinstance(results[70], INTEGRITY_ERRORS)
    rows = await store.buffer_rows()
    assert [r["buffer_id"] for r in rows] == ["dup"] + [f"e{i}" for i in range(150)]
    store.ack_many("gw1", ["e1", "e2", "e3"], T0 + 1)  # e3 is gw2's
    store.ack_many("gw2", ["e3", "e6"], T0 + 2)
    store.ack("gw1", "e4", T0 + 3)
    await store.flush()
    acked = {r["buffer_id"] for r in await store.buffer_rows() if r["acked"]}
    assert acked == {"e1", "e2", "e3", "e4", "e6"}


# --- platform sends ------------------------------------------------------------------------


def _queue(store: BufferStore, send_id: str, text: str, key: str | None = None) -> asyncio.Future[None]:
    return store.record_outbound(
        gateway_id="gw1",
        platform="telegram",
        bot_id="bot1",
        action={"op": "send", "chat_id": "42", "content": text},
        now=T0,
        idempotency_key=key,
        platform_send=(send_id, f"req-{send_id}"),
    )


async def test_buffer_platform_sends_queue_in_order_and_are_found_by_id_and_key(store: BufferStore) -> None:
    """A queued platform send is pending in queue order, listed in the outbox, and found by its
    send id and by its idempotency key; unknown ids and keys find nothing."""
    await asyncio.gather(_queue(store, "s1", "one", key="k1"), _queue(store, "s2", "two"))
    pending = await store.pending_platform_sends("telegram", "bot1")
    assert [(p.send_id, p.request_id, p.action["content"]) for p in pending] == [
        ("s1", "req-s1", "one"),
        ("s2", "req-s2", "two"),
    ]
    assert await store.pending_platform_sends("telegram", "other-bot") == []
    found = await store.platform_send("s2")
    assert found is not None
    assert (found.send_id, found.done, found.result) == ("s2", False, None)
    assert await store.platform_send("nope") is None
    keyed = await store.platform_send_by_key("gw1", "k1")
    assert keyed is not None
    assert keyed.send_id == "s1"
    assert await store.platform_send_by_key("gw2", "k1") is None
    assert len(await store.outbox()) == 2
    # the key waits with its send: no result is stored for it before the send finishes
    assert await store.idempotent_result("gw1", "k1") is None


async def test_buffer_finish_platform_send_stores_result_with_its_key(store: BufferStore) -> None:
    """Attempts are counted; a finished send leaves the queue with its result, and its
    idempotency key then answers with that result."""
    await _queue(store, "s1", "one", key="k1")
    store.note_platform_attempt("s1", "HTTP 502")
    store.note_platform_attempt("s1", "HTTP 502")
    await store.flush()
    (send,) = await store.pending_platform_sends("telegram", "bot1")
    assert send.attempts == 2
    await store.finish_platform_send(send, {"success": True, "message_id": "7"}, T0 + 5)
    assert await store.pending_platform_sends("telegram", "bot1") == []
    done = await store.platform_send("s1")
    assert done is not None
    assert (done.done, done.result) == (True, {"success": True, "message_id": "7"})
    assert await store.idempotent_result("gw1", "k1") == {"success": True, "message_id": "7"}
