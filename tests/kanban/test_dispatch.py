"""dispatch_once against a real state.db: order, caps, default assignee, dry run, races."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.lease import OWNER
from gateway.kanban.dispatch import DispatchResult, as_cap, dispatch_once
from gateway.kanban.store import Task, TaskStore
from gateway.statedb import open_state_db

NOW = 1_800_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[TaskStore]:
    db = await open_state_db(tmp_path / "state.db")
    yield TaskStore(db)
    await db.close()


async def _make(store: TaskStore, alpha: int, beta: int) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {"alpha": [], "beta": []}
    t = NOW
    for name, n in (("alpha", alpha), ("beta", beta)):
        for i in range(n):
            t += 1
            task = await store.create(title=f"{name} {i}", assignee=name, now=t)
            assert task is not None
            ids[name].append(task.id)
    return ids


async def _tick(store: TaskStore, **kw: object) -> tuple[DispatchResult, list[Task]]:
    spawned: list[Task] = []
    result = await dispatch_once(store, spawn_fn=spawned.append, now=NOW + 100, **kw)  # type: ignore[arg-type]
    return result, spawned


def _by(result: DispatchResult) -> tuple[int, int]:
    names = [a for _, a in result.spawned]
    return names.count("alpha"), names.count("beta")


async def test_no_cap_spawns_every_ready_task(store: TaskStore) -> None:
    await _make(store, 5, 3)
    result, spawned = await _tick(store)
    assert _by(result) == (5, 3)
    assert {t.status for t in await store.all()} == {"running"}
    assert [t.id for t in spawned] == [i for i, _ in result.spawned]


async def test_per_profile_cap_two(store: TaskStore) -> None:
    ids = await _make(store, 5, 3)
    result, _ = await _tick(store, max_in_progress_per_profile=2)
    assert result.spawned == [
        (ids["alpha"][0], "alpha"),
        (ids["alpha"][1], "alpha"),
        (ids["beta"][0], "beta"),
        (ids["beta"][1], "beta"),
    ]
    capped = result.skipped_per_profile_capped
    assert [(a, n) for _, a, n in capped] == [("alpha", 2)] * 3 + [("beta", 2)]
    assert [t for t, _, _ in capped] == ids["alpha"][2:] + ids["beta"][2:]


async def test_already_running_counts_against_the_cap(store: TaskStore) -> None:
    """1 alpha running, cap 1: 0 alpha + 1 beta spawned, 2 alpha + 1 beta deferred."""
    await _make(store, 1, 0)
    await _tick(store)  # alpha 0 is now running
    await _make(store, 2, 2)
    result, _ = await _tick(store, max_in_progress_per_profile=1)
    assert _by(result) == (0, 1)
    capped = result.skipped_per_profile_capped
    assert sorted((a, n) for _, a, n in capped) == [("alpha", 1), ("alpha", 1), ("beta", 1)]


@pytest.mark.parametrize("cap", [0, -1, "abc", None, True, 2.5], ids=repr)
async def test_invalid_caps_mean_no_cap(store: TaskStore, cap: object) -> None:
    await _make(store, 5, 3)
    result, _ = await _tick(store, max_in_progress=cap, max_in_progress_per_profile=cap)
    assert _by(result) == (5, 3)
    assert as_cap(cap) is None


async def test_global_cap_counts_running_tasks_and_order_is_priority_then_age(
    store: TaskStore,
) -> None:
    low = await store.create(title="low", assignee="alpha", now=NOW)
    high = await store.create(title="high", assignee="beta", priority=5, now=NOW + 5)
    mid = await store.create(title="mid", assignee="alpha", priority=1, now=NOW + 1)
    assert low
    assert high
    assert mid
    result, _ = await _tick(store, max_in_progress=2)
    assert result.spawned == [(high.id, "beta"), (mid.id, "alpha")]
    assert result.skipped_global_cap == [low.id]
    result, _ = await _tick(store, max_in_progress=2)
    assert (result.spawned, result.skipped_global_cap) == ([], [low.id])


async def test_a_capped_task_spawns_on_the_next_tick_after_one_finishes(store: TaskStore) -> None:
    ids = await _make(store, 2, 0)
    first, _ = await _tick(store, max_in_progress_per_profile=1)
    assert first.spawned == [(ids["alpha"][0], "alpha")]
    again, _ = await _tick(store, max_in_progress_per_profile=1)
    assert again.spawned == []  # still running: still deferred
    await store.finish(ids["alpha"][0], "done", NOW + 200, result="ok")
    after, _ = await _tick(store, max_in_progress_per_profile=1)
    assert after.spawned == [(ids["alpha"][1], "alpha")]


async def test_default_assignee_auto_assigns_and_leaves_an_event(store: TaskStore) -> None:
    task = await store.create(title="unowned", now=NOW)
    assert task is not None
    for blank in ("", "   ", None):
        result, _ = await _tick(store, dry_run=True, default_assignee=blank)
        assert (result.skipped_unassigned, result.spawned) == ([task.id], [])
    result, spawned = await _tick(store, default_assignee=" alpha ")
    assert (result.auto_assigned_default, result.spawned) == ([task.id], [(task.id, "alpha")])
    assert spawned[0].assignee == "alpha"
    row = await store.get(task.id)
    assert row is not None
    assert row.assignee == "alpha"
    [assigned] = [e for e in await store.events(task.id) if e["kind"] == "assigned"]
    assert assigned["payload"] == {"assignee": "alpha", "source": "kanban.default_assignee"}


async def test_unknown_profile_is_blocked_with_an_error_naming_it(store: TaskStore) -> None:
    task = await store.create(title="t", assignee="ghost", now=NOW)
    assert task is not None
    result, spawned = await _tick(store, profiles=["default", "alpha"])
    assert spawned == []
    row = await store.get(task.id)
    assert row is not None
    assert row.status == "blocked"
    assert row.error == "unknown profile 'ghost' (known profiles: alpha, default)"
    assert result.blocked == [(task.id, "ghost", row.error)]


def _dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


async def test_dry_run_writes_nothing_and_reports_what_a_real_tick_spawns(
    tmp_path: Path,
    store: TaskStore,
) -> None:
    await _make(store, 5, 3)
    for _ in range(2):
        await store.create(title="unowned", now=NOW + 50)
    await store.create(title="ghost", assignee="ghost", now=NOW + 60)
    kw = {
        "max_in_progress_per_profile": 2,
        "max_in_progress": 3,
        "default_assignee": "beta",
        "profiles": ["alpha", "beta"],
    }
    before = _dump(tmp_path / "state.db")
    dry, spawned = await _tick(store, dry_run=True, **kw)
    assert spawned == []
    assert _dump(tmp_path / "state.db") == before
    real, _ = await _tick(store, **kw)
    assert dry == real
    assert real.auto_assigned_default
    assert real.blocked
    assert real.skipped_global_cap
    assert real.skipped_per_profile_capped


async def test_two_dispatchers_race_over_500_tasks_and_claim_each_once(tmp_path: Path) -> None:
    """Two connections (two dispatchers, each on its own SQLite connection and thread) tick
    side by side until the board is empty: every task is claimed exactly once. (How the claims
    split between them depends on who wins the write lock, so only the union is asserted.)"""
    path = tmp_path / "race.db"
    dbs = [await open_state_db(path), await open_state_db(path)]
    try:
        stores = [TaskStore(db) for db in dbs]
        for i in range(500):
            await stores[0].create(title=f"t{i}", assignee=("alpha", "beta")[i % 2], now=NOW + i)
        claims: list[list[int]] = [[], []]

        async def run(k: int) -> None:
            while True:
                result = await dispatch_once(
                    stores[k], spawn_fn=lambda t: None, now=NOW, max_in_progress=7, owner=f"host:{k}"
                )
                claims[k] += [i for i, _ in result.spawned]
                if not result.spawned and not result.skipped_global_cap:
                    return
                # finish this dispatcher's work so the global cap frees up
                for task_id, _ in result.spawned:
                    await stores[k].finish(task_id, "done", NOW)
                await asyncio.sleep(0)

        await asyncio.gather(run(0), run(1))
        everything = claims[0] + claims[1]
        assert sorted(everything) == list(range(1, 501))  # each exactly once
        async with dbs[0].execute("SELECT COUNT(*) FROM task_events WHERE kind = 'claimed'") as c:
            assert (await c.fetchone()) == (500,)
    finally:
        for db in dbs:
            await db.close()


async def test_lapsed_running_tasks_go_back_to_ready_with_an_event(store: TaskStore) -> None:
    """A claim whose lease ran out is requeued; one held by another live process is not."""
    dead = await store.create(title="dead owner", assignee="alpha", now=NOW)
    live = await store.create(title="live owner", assignee="alpha", now=NOW)
    assert dead
    assert live
    await dispatch_once(store, spawn_fn=lambda t: None, now=NOW, owner="nohost-x:1")
    # the "live" one is claimed by another live process on this host (our parent)
    await store.db.execute(
        "UPDATE tasks SET claim_lock = ? WHERE id = ?", (f"{socket.gethostname()}:{os.getppid()}", live.id)
    )
    await store.db.execute("UPDATE tasks SET claim_expires_at = ? WHERE id = ?", (NOW - 1, dead.id))
    assert await store.requeue_lapsed(NOW + 10) == [dead.id]
    row = await store.get(dead.id)
    assert row is not None
    assert (row.status, row.claim_lock) == ("ready", None)
    assert (await store.events(dead.id))[-1]["kind"] == "requeued"
    still = await store.get(live.id)
    assert still is not None
    assert still.status == "running"


RACER = """
import asyncio, json, sys
from pathlib import Path
from gateway.kanban.dispatch import dispatch_once
from gateway.kanban.store import TaskStore
from gateway.statedb import open_state_db

async def main():
    db = await open_state_db(Path(sys.argv[1]))
    store, mine = TaskStore(db), []
    while True:
        r = await dispatch_once(store, spawn_fn=lambda t: None, max_in_progress=5)
        mine += [i for i, _ in r.spawned]
        if not r.spawned and not r.skipped_global_cap:
            break
        for i, _ in r.spawned:
            await store.finish(i, "done", 0.0)
    await db.close()
    print(json.dumps(mine))

asyncio.run(main())
"""


async def test_two_dispatcher_processes_claim_each_of_500_tasks_once(tmp_path: Path) -> None:
    """The same race across two OS processes (two SQLite connections in two processes)."""
    path = tmp_path / "race.db"
    db = await open_state_db(path)
    store = TaskStore(db)
    for i in range(500):
        await store.create(title=f"t{i}", assignee="alpha", now=NOW + i)
    await db.close()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACER,
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    claims = [json.loads(out) for out, _ in outs]
    assert sorted(claims[0] + claims[1]) == list(range(1, 501))


async def test_a_claim_under_this_very_pid_is_lapsed_at_start_up(store: TaskStore) -> None:
    """A container restarts with the same pid: a claim recorded under our own host:pid is an
    earlier process's, so start-up requeues it instead of leaving it running for the lease."""
    task = await store.create(title="before the restart", assignee="alpha", now=NOW)
    assert task
    await dispatch_once(store, spawn_fn=lambda t: None, now=NOW, owner=OWNER)
    assert await store.requeue_lapsed(NOW + 1) == [task.id]


async def test_insert_tasks_answers_each_row_in_order(store: TaskStore) -> None:
    """A batch over several multi-row statements: new rows get their ids in order, a ref made
    before or earlier in the batch is a duplicate (None), rows without a ref are all new, and
    every new task has one ``created`` event naming its assignee."""
    from common.sqlite import run_tx
    from gateway.kanban.store import TaskRow, insert_tasks

    await store.create(title="old", source="cron", ref="cron:j@1.0", now=NOW)
    rows: list[TaskRow] = [(f"t{i}", "", "alpha", 0, "inbound", f"inbox:{i}", "ready") for i in range(100)]
    rows[30] = ("again", "", "alpha", 0, "inbound", "inbox:7", "ready")
    rows[40] = ("old", "", "beta", 0, "cron", "cron:j@1.0", "ready")
    ids = await run_tx(store.db, lambda conn: insert_tasks(conn, rows, NOW))
    assert ids[30] is None
    assert ids[40] is None
    made = [i for i in ids if i is not None]
    assert len(made) == 98
    assert made == sorted(made)
    for i in (0, 7, 99):
        task = await store.get(ids[i])  # type: ignore[arg-type]
        assert task is not None
        assert task.ref == f"inbox:{i}"
        assert [(e["kind"], e["payload"]) for e in await store.events(task.id)] == [
            ("created", {"assignee": "alpha", "source": "inbound"})
        ]
    manual: list[TaskRow] = [("m", "", None, 0, "manual", None, "todo")] * 2
    two = await run_tx(store.db, lambda conn: insert_tasks(conn, manual, NOW))
    assert None not in two
    assert len(set(two)) == 2
    with pytest.raises(ValueError, match="'later'"):
        await run_tx(
            store.db, lambda conn: insert_tasks(conn, [("x", "", None, 0, "manual", None, "later")], NOW)
        )
