"""DeliveryStore contract (``gateway/cron/deliveries_store.py``), run on every backend of
``delivery_store``."""

from __future__ import annotations

import pytest

from gateway.cron.deliveries_store import Delivery, DeliveryStore

T0 = 1_714_557_600.0  # 2024-05-01 10:00 UTC


@pytest.fixture
def store(delivery_store: DeliveryStore) -> DeliveryStore:
    return delivery_store


async def test_delivery_pending_empty_at_first(store: DeliveryStore) -> None:
    """A new store has nothing pending."""
    assert await store.pending() == []


async def test_delivery_queue_then_pending_in_queue_order(store: DeliveryStore) -> None:
    """Deliveries come back pending in queue order (ascending ids), with what was queued."""
    await store.queue("telegram", "42", "first", T0)
    await store.queue("slack", "C1", "second", T0 + 1)
    await store.queue("telegram", "42", "third", T0 + 2)
    pending = await store.pending()
    assert all(isinstance(d, Delivery) for d in pending)
    assert [(d.platform, d.chat_id, d.content) for d in pending] == [
        ("telegram", "42", "first"),
        ("slack", "C1", "second"),
        ("telegram", "42", "third"),
    ]
    ids = [d.id for d in pending]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3


async def test_delivery_pending_rows_unpack_as_tuples(store: DeliveryStore) -> None:
    """A pending delivery is still the (id, platform, chat_id, content) tuple callers unpack."""
    await store.queue("relay", "c1", "the digest", T0)
    ((delivery_id, platform, chat_id, content),) = await store.pending()
    assert (platform, chat_id, content) == ("relay", "c1", "the digest")
    assert await store.pending() == [(delivery_id, "relay", "c1", "the digest")]


@pytest.mark.parametrize(
    ("marks", "left"),
    [
        ([1], ["first", "third"]),
        ([1, 1], ["first", "third"]),
        ([0, 1, 2], []),
        ([], ["first", "second", "third"]),
    ],
    ids=["one", "same-twice", "all", "none"],
)
async def test_delivery_mark_delivered_leaves_the_rest_pending(
    store: DeliveryStore, marks: list[int], left: list[str]
) -> None:
    """mark_delivered takes a delivery out of pending (again: no change); the rest keep order."""
    for i, text in enumerate(("first", "second", "third")):
        await store.queue("telegram", "42", text, T0 + i)
    ids = [d.id for d in await store.pending()]
    for n, i in enumerate(marks):
        await store.mark_delivered(ids[i], T0 + 10 + n)
    assert [d.content for d in await store.pending()] == left


async def test_delivery_mark_unknown_id_changes_nothing(store: DeliveryStore) -> None:
    """An unknown id is ignored: nothing raised, nothing marked."""
    await store.queue("telegram", "42", "only", T0)
    await store.mark_delivered(999_999, T0 + 1)
    assert [d.content for d in await store.pending()] == ["only"]


async def test_delivery_queue_after_mark_goes_to_the_end(store: DeliveryStore) -> None:
    """A delivery queued after others were sent comes after the still pending ones."""
    await store.queue("telegram", "42", "a", T0)
    await store.queue("telegram", "42", "b", T0 + 1)
    first = (await store.pending())[0]
    await store.mark_delivered(first.id, T0 + 2)
    await store.queue("telegram", "42", "c", T0 + 3)
    assert [d.content for d in await store.pending()] == ["b", "c"]
