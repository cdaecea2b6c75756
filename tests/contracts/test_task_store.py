"""TaskStore contract (``gateway/kanban/store.py``), run on every backend of ``task_store``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from gateway.core.lease import OWNER
from gateway.kanban.store import STATUSES, Task, TaskStore
from tests.contracts.conftest import ClaimTask

T0 = 1_714_557_600.0  # 2024-05-01 10:00 UTC
ELSEWHERE = "another-host:4242"  # another host's claim: only its lease decides


@pytest.fixture
def store(task_store: TaskStore) -> TaskStore:
    return task_store


async def test_task_create_returns_the_stored_task(store: TaskStore) -> None:
    """create returns the task as get reads it, with defaults filled in and a created event."""
    task = await store.create(title="t", now=T0, body="b", assignee="ops", priority=3)
    assert task is not None
    assert task == await store.get(task.id)
    assert (task.title, task.body, task.assignee, task.priority, task.status) == ("t", "b", "ops", 3, "ready")
    assert (task.source, task.ref, task.created_at) == ("manual", None, T0)
    assert (task.started_at, task.finished_at, task.claim_lock, task.result, task.error) == (None,) * 5
    assert await store.events(task.id) == [
        {"kind": "created", "payload": {"source": "manual", "assignee": "ops"}, "at": T0}
    ]


@pytest.mark.parametrize(
    ("first", "second", "duplicate"),
    [
        (("cron", "cron:a@1"), ("cron", "cron:a@1"), True),
        (("inbound", "inbox:1"), ("inbound", "inbox:1"), True),
        (("cron", "x"), ("inbound", "x"), False),
        (("cron", "cron:a@1"), ("cron", "cron:a@2"), False),
        (("manual", None), ("manual", None), False),
    ],
    ids=["same-cron-ref", "same-inbox-ref", "same-ref-other-source", "other-ref", "no-ref"],
)
async def test_task_create_is_idempotent_per_source_and_ref(
    store: TaskStore, first: tuple[str, str | None], second: tuple[str, str | None], duplicate: bool
) -> None:
    """A second create with the same (source, ref) returns None and adds no task or event."""
    a = await store.create(title="a", now=T0, source=first[0], ref=first[1])
    b = await store.create(title="b", now=T0 + 1, source=second[0], ref=second[1])
    assert a is not None
    assert (b is None) is duplicate
    assert len(await store.all()) == (1 if duplicate else 2)
    assert [e["kind"] for e in await store.events(a.id)] == ["created"]


async def test_task_insert_is_idempotent_inside_one_transaction(store: TaskStore) -> None:
    """insert gives the new id, then None for the same (source, ref), without failing the caller."""
    first = await store.insert(title="a", now=T0, source="cron", ref="cron:j@1")
    again = await store.insert(title="a", now=T0, source="cron", ref="cron:j@1")
    assert isinstance(first, int)
    assert again is None
    assert [t.id for t in await store.all()] == [first]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "email"}, "source 'email'"),
        ({"status": "running"}, "status 'running'"),
        ({"status": "done"}, "status 'done'"),
    ],
    ids=["bad-source", "running-status", "done-status"],
)
async def test_task_create_rejects_bad_source_or_status(
    store: TaskStore, kwargs: dict[str, Any], message: str
) -> None:
    """create raises a ValueError naming the bad value and stores nothing."""
    with pytest.raises(ValueError, match=message):
        await store.create(title="t", now=T0, **kwargs)
    assert await store.all() == []


async def test_task_get_unknown_id_is_none(store: TaskStore) -> None:
    """get of an id never created is None."""
    assert await store.get(12345) is None


@pytest.mark.parametrize(
    ("status", "limit", "expected"),
    [
        (None, 1000, ["d", "c", "b", "a"]),
        (None, 2, ["d", "c"]),
        ("todo", 1000, ["c"]),
        ("ready", 1000, ["d", "b", "a"]),
        ("done", 1000, []),
    ],
    ids=["all", "limited", "todo", "ready", "none-done"],
)
async def test_task_all_newest_first_with_filter_and_limit(
    store: TaskStore, status: str | None, limit: int, expected: list[str]
) -> None:
    """all lists newest first, filtered by status and cut at limit."""
    for i, (title, st) in enumerate([("a", "ready"), ("b", "ready"), ("c", "todo"), ("d", "ready")]):
        await store.create(title=title, now=T0 + i, status=st)
    assert [t.title for t in await store.all(status, limit=limit)] == expected


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([("low", 0, 0.0), ("high", 5, 9.0)], ["high", "low"]),
        ([("late", 1, 9.0), ("early", 1, 1.0)], ["early", "late"]),
        ([("first", 1, 5.0), ("second", 1, 5.0)], ["first", "second"]),
        (
            [("p0", 0, 1.0), ("p2-late", 2, 8.0), ("p2", 2, 3.0), ("neg", -1, 0.0)],
            ["p2", "p2-late", "p0", "neg"],
        ),
    ],
    ids=["priority-first", "then-age", "then-id", "mixed"],
)
async def test_task_ready_orders_by_priority_then_age_then_id(
    store: TaskStore, rows: list[tuple[str, int, float]], expected: list[str]
) -> None:
    """ready lists ready tasks high priority first, then oldest, then lowest id."""
    for title, priority, age in rows:
        await store.create(title=title, now=T0 + age, priority=priority)
    await store.create(title="not-ready", now=T0 - 100, priority=99, status="todo")
    assert [t.title for t in await store.ready()] == expected


async def test_task_ready_leaves_out_running_and_finished(store: TaskStore, claim_task: ClaimTask) -> None:
    """Only status ready is dispatchable: running, done and todo tasks are left out."""
    ids = []
    for i in range(4):
        task = await store.create(title=f"t{i}", now=T0 + i)
        assert task is not None
        ids.append(task.id)
    await claim_task(store, ids[0], ELSEWHERE, T0 + 60, T0)
    await claim_task(store, ids[1], ELSEWHERE, T0 + 60, T0)
    await store.finish(ids[1], "done", T0 + 2)
    assert [t.id for t in await store.ready()] == ids[2:]


@pytest.mark.parametrize(
    ("assignees", "expected"),
    [
        ([], {}),
        (["ops", "ops", "dev"], {"ops": 2, "dev": 1}),
        ([None, ""], {"": 2}),
    ],
    ids=["none-running", "per-assignee", "blank-and-none-together"],
)
async def test_task_running_counts_per_assignee(
    store: TaskStore, claim_task: ClaimTask, assignees: list[str | None], expected: dict[str, int]
) -> None:
    """running_counts counts running tasks per assignee, None and blank under ""."""
    for i, who in enumerate(assignees):
        task = await store.create(title=f"t{i}", now=T0, assignee=who)
        assert task is not None
        await claim_task(store, task.id, ELSEWHERE, T0 + 60, T0)
    await store.create(title="waiting", now=T0, assignee="ops")  # ready: not counted
    assert await store.running_counts() == expected


async def test_task_counts_every_status(store: TaskStore, claim_task: ClaimTask) -> None:
    """counts has every status, 0 when none, in STATUSES order."""
    assert await store.counts() == dict.fromkeys(STATUSES, 0)
    a = await store.create(title="a", now=T0)
    b = await store.create(title="b", now=T0)
    await store.create(title="c", now=T0, status="todo")
    assert a is not None
    assert b is not None
    await claim_task(store, a.id, ELSEWHERE, T0 + 60, T0)
    await store.finish(a.id, "failed", T0 + 1, error="boom")
    counts = await store.counts()
    assert list(counts) == list(STATUSES)
    assert counts == {"todo": 1, "ready": 1, "running": 0, "done": 0, "failed": 1, "blocked": 0}


@pytest.mark.parametrize(
    ("status", "result", "error"),
    [("done", "ok", None), ("failed", None, "boom"), ("failed", "partial", "timeout")],
    ids=["done", "failed", "failed-with-result"],
)
async def test_task_finish_closes_the_claim(
    store: TaskStore, claim_task: ClaimTask, status: str, result: str | None, error: str | None
) -> None:
    """finish sets status, finished_at, result and error, clears the claim and logs a finished event."""
    task = await store.create(title="t", now=T0)
    assert task is not None
    await claim_task(store, task.id, ELSEWHERE, T0 + 60, T0 + 1)
    await store.finish(task.id, status, T0 + 5, result=result, error=error)
    done = await store.get(task.id)
    assert done is not None
    assert (done.status, done.finished_at, done.result, done.error) == (status, T0 + 5, result, error)
    assert (done.claim_lock, done.claim_expires_at, done.started_at) == (None, None, T0 + 1)
    assert (await store.events(task.id))[-1] == {
        "kind": "finished",
        "payload": {"status": status, "error": error},
        "at": T0 + 5,
    }


@pytest.mark.parametrize("status", ["ready", "running", "blocked", "todo"], ids=str)
async def test_task_finish_rejects_other_statuses(store: TaskStore, status: str) -> None:
    """finish takes done or failed only; anything else is a ValueError and changes nothing."""
    task = await store.create(title="t", now=T0)
    assert task is not None
    with pytest.raises(ValueError, match=f"finish status {status!r}"):
        await store.finish(task.id, status, T0 + 1)
    assert await store.get(task.id) == task
    assert len(await store.events(task.id)) == 1


async def test_task_events_in_order_and_per_task(store: TaskStore) -> None:
    """events lists one task's events oldest first, payloads decoded; an unknown task has none."""
    a = await store.create(title="a", now=T0)
    b = await store.create(title="b", now=T0)
    assert a is not None
    assert b is not None
    await store.finish(a.id, "done", T0 + 2)
    assert [e["kind"] for e in await store.events(a.id)] == ["created", "finished"]
    assert [e["kind"] for e in await store.events(b.id)] == ["created"]
    assert await store.events(999) == []


@pytest.mark.parametrize(
    ("lock", "expires_at", "requeued"),
    [
        (ELSEWHERE, T0 + 600, False),
        (ELSEWHERE, T0 - 1, True),
        (OWNER, T0 + 600, True),
        (None, T0 + 600, True),
        ("no-colon", T0 + 600, True),
    ],
    ids=["live-lease-elsewhere", "lease-over", "own-pid-from-before", "no-owner", "bad-owner"],
)
async def test_task_requeue_lapsed_only_lapsed_claims(
    store: TaskStore, claim_task: ClaimTask, lock: str | None, expires_at: float, requeued: bool
) -> None:
    """requeue_lapsed puts a lapsed running task back to ready with a requeued event naming the claim."""
    task = await store.create(title="t", now=T0 - 100)
    assert task is not None
    await claim_task(store, task.id, lock, expires_at, T0 - 10)
    assert await store.requeue_lapsed(T0) == ([task.id] if requeued else [])
    after = await store.get(task.id)
    assert after is not None
    if requeued:
        assert (after.status, after.started_at, after.claim_lock, after.claim_expires_at) == (
            "ready",
            None,
            None,
            None,
        )
        assert (await store.events(task.id))[-1] == {
            "kind": "requeued",
            "payload": {"lapsed_claim": lock},
            "at": T0,
        }
    else:
        assert (after.status, after.claim_lock) == ("running", lock)
        assert [e["kind"] for e in await store.events(task.id)] == ["created"]


async def test_task_requeue_lapsed_ignores_tasks_not_running(store: TaskStore) -> None:
    """Ready, todo and finished tasks are never requeued (nothing to return)."""
    a = await store.create(title="a", now=T0)
    await store.create(title="b", now=T0, status="todo")
    assert a is not None
    await store.finish(a.id, "done", T0 + 1)
    assert await store.requeue_lapsed(T0 + 10_000) == []
    assert (await store.counts())["ready"] == 0


# --- claim (one dispatcher tick) -----------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """A ``ClaimPlan``: what the dispatcher decided, plus what ``claim`` showed it."""

    auto_assigned_default: list[int] = dataclasses.field(default_factory=list)
    blocked: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    spawned: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    seen: tuple[list[int], dict[str, int]] = ([], {})


def planner(
    spawn: Sequence[int] = (),
    *,
    auto: Sequence[int] = (),
    block: Sequence[int] = (),
    default: str = "ops",
) -> Callable[[list[Task], dict[str, int]], Plan]:
    """A plan that spawns, auto-assigns and blocks the given ids and records its inputs."""

    def plan(ready: list[Task], running: dict[str, int]) -> Plan:
        who = {t.id: t.assignee or default for t in ready}
        return Plan(
            auto_assigned_default=list(auto),
            blocked=[(i, who[i], f"unknown profile {who[i]!r}") for i in block],
            spawned=[(i, who[i]) for i in spawn],
            seen=([t.id for t in ready], running),
        )

    return plan


async def test_task_claim_runs_the_planned_tasks(store: TaskStore) -> None:
    """claim puts spawned tasks in running for the owner until now + lease, with a claimed event,
    and returns them as get reads them; the other ready tasks stay ready."""
    a = await store.create(title="a", assignee="alpha", now=T0)
    b = await store.create(title="b", assignee="beta", now=T0)
    assert a is not None
    assert b is not None
    plan, claimed = await store.claim(
        planner([a.id]), default_assignee=None, now=T0 + 5, owner=ELSEWHERE, lease_s=60.0
    )
    assert plan.spawned == [(a.id, "alpha")]
    after = await store.get(a.id)
    assert claimed == [after]
    assert after is not None
    assert (after.status, after.started_at, after.claim_lock, after.claim_expires_at) == (
        "running",
        T0 + 5,
        ELSEWHERE,
        T0 + 65,
    )
    assert (await store.events(a.id))[-1] == {
        "kind": "claimed",
        "payload": {"assignee": "alpha", "owner": ELSEWHERE},
        "at": T0 + 5,
    }
    assert [t.id for t in await store.ready()] == [b.id]
    assert await store.running_counts() == {"alpha": 1}


async def test_task_claim_plans_on_ready_in_order_and_running_counts(
    store: TaskStore, claim_task: ClaimTask
) -> None:
    """The plan sees the ready tasks in dispatch order and the running tasks per assignee."""
    low = await store.create(title="low", assignee="alpha", now=T0)
    high = await store.create(title="high", assignee="alpha", priority=5, now=T0 + 1)
    busy = await store.create(title="busy", assignee="beta", now=T0)
    assert low is not None
    assert high is not None
    assert busy is not None
    await claim_task(store, busy.id, ELSEWHERE, T0 + 600, T0)
    plan, claimed = await store.claim(planner(), default_assignee=None, now=T0 + 5, owner=OWNER, lease_s=60.0)
    assert plan.seen == ([high.id, low.id], {"beta": 1})
    assert claimed == []
    assert [e["kind"] for e in await store.events(low.id)] == ["created"]


async def test_task_claim_assigns_the_default(store: TaskStore) -> None:
    """An auto-assigned task takes default_assignee (an assigned event) before its claim."""
    task = await store.create(title="t", now=T0)
    assert task is not None
    _, claimed = await store.claim(
        planner([task.id], auto=[task.id]), default_assignee="ops", now=T0 + 5, owner=OWNER, lease_s=60.0
    )
    assert [t.assignee for t in claimed] == ["ops"]
    after = await store.get(task.id)
    assert after is not None
    assert (after.assignee, after.status) == ("ops", "running")
    assert [(e["kind"], e["payload"]) for e in await store.events(task.id)][1:] == [
        ("assigned", {"assignee": "ops", "source": "kanban.default_assignee"}),
        ("claimed", {"assignee": "ops", "owner": OWNER}),
    ]


async def test_task_claim_blocks_the_blocked(store: TaskStore) -> None:
    """A blocked task gets status blocked, the error and finished_at, and a blocked event."""
    task = await store.create(title="t", assignee="ghost", now=T0)
    assert task is not None
    _, claimed = await store.claim(
        planner(block=[task.id]), default_assignee=None, now=T0 + 5, owner=OWNER, lease_s=60.0
    )
    assert claimed == []
    after = await store.get(task.id)
    assert after is not None
    assert (after.status, after.error, after.finished_at, after.claim_lock) == (
        "blocked",
        "unknown profile 'ghost'",
        T0 + 5,
        None,
    )
    assert (await store.events(task.id))[-1] == {
        "kind": "blocked",
        "payload": {"assignee": "ghost", "error": "unknown profile 'ghost'"},
        "at": T0 + 5,
    }
    assert (await store.counts())["blocked"] == 1


async def test_task_claim_writes_nothing_when_the_plan_fails(store: TaskStore) -> None:
    """A plan that raises rolls the tick back: the error comes out, no task or event changed."""
    task = await store.create(title="t", now=T0)
    assert task is not None

    def broken(ready: list[Task], running: dict[str, int]) -> Plan:
        raise RuntimeError("plan failed")

    with pytest.raises(RuntimeError, match="plan failed"):
        await store.claim(broken, default_assignee="ops", now=T0 + 5, owner=OWNER, lease_s=60.0)
    assert await store.get(task.id) == task
    assert [e["kind"] for e in await store.events(task.id)] == ["created"]
    # the store is usable afterwards (the transaction was closed)
    _, claimed = await store.claim(
        planner([task.id]), default_assignee="ops", now=T0 + 6, owner=OWNER, lease_s=60.0
    )
    assert [t.id for t in claimed] == [task.id]
