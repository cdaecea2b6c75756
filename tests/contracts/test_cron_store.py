"""CronStore contract (``gateway/cron/store.py``), run on every backend of ``cron_store``."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import pytest

from common.timefmt import rfc3339
from gateway.core.lease import OWNER
from gateway.cron.store import CronStore, Job
from tests.contracts.conftest import SetRunOwner

T0 = 1_714_557_600.0  # 2024-05-01 10:00 UTC
ELSEWHERE = "another-host:4242"  # another host's run: only its lease decides


def job(job_id: str, next_run_at: float | None = T0, *, enabled: bool = True, created: float = T0) -> Job:
    return Job(
        id=job_id,
        prompt=f"prompt {job_id}",
        schedule="*/5 * * * *",
        tz="UTC",
        created_at=created,
        next_run_at=next_run_at,
        enabled=enabled,
        updated_at=created,
    )


@pytest.fixture
def store(cron_store: CronStore) -> CronStore:
    return cron_store


# --- jobs ----------------------------------------------------------------------------------


async def test_cron_add_then_get_round_trips_every_field(store: CronStore) -> None:
    """Every Job field (skills list, optional floats, enabled flag) comes back as stored."""
    full = Job(
        id="j1",
        prompt="p",
        schedule="0 9 * * 1",
        tz="Europe/Paris",
        created_at=T0,
        name="weekly",
        profile="ops",
        model="m",
        provider="prov",
        provider_snapshot="prov@1",
        model_snapshot="m@1",
        skills=["a", "b"],
        deliver_to="telegram:42",
        catch_up="all",
        misfire_grace_seconds=30.5,
        enabled=False,
        next_run_at=T0 + 60,
        updated_at=T0 + 1,
    )
    await store.add(full)
    assert await store.get("j1") == full
    assert await store.get("nope") is None


async def test_cron_add_duplicate_id_fails(store: CronStore) -> None:
    """A second add with the same id raises IntegrityError and keeps the first job."""
    await store.add(job("j1"))
    with pytest.raises(sqlite3.IntegrityError):
        await store.add(dataclasses.replace(job("j1"), prompt="other"))
    stored = await store.get("j1")
    assert stored is not None
    assert stored.prompt == "prompt j1"


async def test_cron_all_in_creation_order_then_id(store: CronStore) -> None:
    """all lists jobs by created_at, ties by id."""
    for job_id, created in [("c", T0 + 2), ("b", T0), ("a", T0), ("d", T0 + 1)]:
        await store.add(job(job_id, created=created))
    assert [j.id for j in await store.all()] == ["a", "b", "d", "c"]


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "new prompt"},
        {"skills": ["x"], "deliver_to": None},
        {"enabled": False, "next_run_at": None},
        {"misfire_grace_seconds": 5.0, "catch_up": "none", "updated_at": T0 + 9},
    ],
    ids=["prompt", "skills-and-delivery", "disable", "grace-and-catch-up"],
)
async def test_cron_save_overwrites_every_column(store: CronStore, change: dict[str, Any]) -> None:
    """save (the update) writes every column of the job and leaves other jobs alone."""
    await store.add(job("j1"))
    await store.add(job("j2"))
    changed = dataclasses.replace(job("j1"), **change)
    await store.save(changed)
    assert await store.get("j1") == changed
    assert await store.get("j2") == job("j2")


async def test_cron_save_unknown_job_adds_nothing(store: CronStore) -> None:
    """save of an id never added writes nothing."""
    await store.save(job("ghost"))
    assert await store.all() == []


@pytest.mark.parametrize(("existing", "removed"), [(True, True), (False, False)], ids=["existing", "unknown"])
async def test_cron_remove_reports_and_drops_drift(store: CronStore, existing: bool, removed: bool) -> None:
    """remove says whether a job went, and drops its drift episode with it."""
    if existing:
        await store.add(job("j1"))
        assert await store.open_drift("j1", "model moved", T0)
    assert await store.remove("j1") is removed
    assert await store.get("j1") is None
    assert await store.drift_episodes() == []


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (T0 - 1, []),
        (T0, ["on-time"]),
        (T0 + 30, ["on-time", "later"]),
        (T0 + 1000, ["on-time", "later", "last"]),
    ],
    ids=["before-any", "at-boundary", "some", "all-enabled"],
)
async def test_cron_due_enabled_jobs_earliest_first(
    store: CronStore, now: float, expected: list[str]
) -> None:
    """due lists enabled jobs with next_run_at <= now, earliest first; disabled and unscheduled never."""
    await store.add(job("last", T0 + 500))
    await store.add(job("later", T0 + 30))
    await store.add(job("on-time", T0))
    await store.add(job("off", T0 - 100, enabled=False))
    await store.add(job("retired", None))
    assert [j.id for j in await store.due(now)] == expected


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ([], None),
        ([job("a", T0 + 9), job("b", T0 + 3)], T0 + 3),
        ([job("a", T0 + 9), job("b", T0 + 3, enabled=False)], T0 + 9),
        ([job("a", None), job("b", T0 + 3, enabled=False)], None),
    ],
    ids=["no-jobs", "earliest", "disabled-left-out", "nothing-scheduled"],
)
async def test_cron_next_due_earliest_enabled_run(
    store: CronStore, jobs: list[Job], expected: float | None
) -> None:
    """next_due is the earliest next_run_at of enabled jobs, None when there is none."""
    for j in jobs:
        await store.add(j)
    assert await store.next_due() == expected


@pytest.mark.parametrize(
    ("expected", "next_run_at", "missed", "moved"),
    [
        (T0, T0 + 300, [], True),
        (T0 - 5, T0 + 300, [], False),
        (T0, T0 + 300, [T0 - 600, T0 - 300], True),
        (T0 - 5, T0 + 300, [T0 - 600], False),
        (T0, None, [], True),
    ],
    ids=["on-time", "lost-race", "with-misses", "lost-race-with-misses", "retire"],
)
async def test_cron_advance_compare_and_set(
    store: CronStore, expected: float, next_run_at: float | None, missed: list[float], moved: bool
) -> None:
    """advance moves next_run_at only from the expected value, records misses, retires at None."""
    await store.add(job("j1", T0))
    assert (
        await store.advance("j1", expected=expected, next_run_at=next_run_at, missed=missed, now=T0 + 1)
        is moved
    )
    after = await store.get("j1")
    assert after is not None
    assert after.next_run_at == (next_run_at if moved else T0)
    assert after.enabled is (not moved or next_run_at is not None)
    assert after.updated_at == (T0 + 1 if moved and next_run_at is None else T0)
    history = await store.history("j1")
    assert [(r["scheduled_for"], r["status"]) for r in history] == [
        (rfc3339(t), "missed") for t in sorted(missed if moved else [], reverse=True)
    ]


# --- the run ledger ------------------------------------------------------------------------


async def test_cron_claim_once_per_occurrence(store: CronStore) -> None:
    """The first claim of (job, scheduled_for) gets a run id; any later claim or record gets None."""
    run_id = await store.claim("j1", T0, T0 + 1, lease_s=60)
    assert isinstance(run_id, int)
    assert await store.claim("j1", T0, T0 + 2, lease_s=60) is None
    assert await store.record("j1", T0, "skipped_overlap", T0 + 2) is None
    other = await store.claim("j1", T0 + 300, T0 + 301, lease_s=60)
    also = await store.claim("j2", T0, T0 + 1, lease_s=60)
    assert other is not None
    assert also is not None
    assert len({run_id, other, also}) == 3
    row = await store.run_row(run_id)
    assert (row["status"], row["started_at"], row["finished_at"]) == ("running", rfc3339(T0 + 1), None)
    assert await store.running("j1")
    assert await store.running("j2")
    assert not await store.running("j3")


@pytest.mark.parametrize(
    ("status", "error"),
    [("missed", None), ("skipped_overlap", None), ("blocked_drift", "model moved"), ("blocked_budget", "$5")],
    ids=["missed", "skipped-overlap", "blocked-drift", "blocked-budget"],
)
async def test_cron_record_takes_the_occurrence(store: CronStore, status: str, error: str | None) -> None:
    """record stores a finished, never-started row that also holds the claim."""
    run_id = await store.record("j1", T0, status, T0 + 1, error)
    assert run_id is not None
    assert await store.claim("j1", T0, T0 + 2, lease_s=60) is None
    row = await store.run_row(run_id)
    assert (row["status"], row["error"], row["started_at"], row["finished_at"]) == (
        status,
        error,
        None,
        rfc3339(T0 + 1),
    )
    assert not await store.running("j1")


@pytest.mark.parametrize(
    ("status", "fields"),
    [
        ("succeeded", {}),
        (
            "succeeded",
            {
                "model": "m",
                "provider": "p",
                "input_tokens": 10,
                "output_tokens": 20,
                "cost_usd": 0.25,
                "routing_reason": "cheapest",
                "output": "hello",
            },
        ),
        ("failed", {"error": "boom"}),
    ],
    ids=["bare", "every-result-column", "failed"],
)
async def test_cron_finish_sets_the_result_columns(
    store: CronStore, status: str, fields: dict[str, Any]
) -> None:
    """finish closes the run with its status, finish time and the given columns only."""
    run_id = await store.claim("j1", T0, T0 + 1, lease_s=60)
    assert run_id is not None
    await store.finish(run_id, status, T0 + 9, **fields)
    row = await store.run_row(run_id)
    assert (row["status"], row["finished_at"], row["started_at"]) == (
        status,
        rfc3339(T0 + 9),
        rfc3339(T0 + 1),
    )
    for key in (
        "error",
        "model",
        "provider",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "routing_reason",
        "output",
    ):
        assert row[key] == fields.get(key)
    assert not await store.running("j1")


async def test_cron_finish_rejects_unknown_column(store: CronStore) -> None:
    """finish raises ValueError for a column outside the ledger's result columns; the run stays open."""
    run_id = await store.claim("j1", T0, T0 + 1, lease_s=60)
    assert run_id is not None
    with pytest.raises(ValueError, match="unknown ledger column 'owner'"):
        await store.finish(run_id, "succeeded", T0 + 2, owner="x")
    assert (await store.run_row(run_id))["status"] == "running"


@pytest.mark.parametrize(
    ("owner", "lease_until", "interrupted"),
    [
        (ELSEWHERE, T0 + 600, False),
        (ELSEWHERE, T0 - 1, True),
        (OWNER, T0 + 600, True),
        (None, T0 + 600, True),
    ],
    ids=["live-elsewhere", "lease-over", "own-pid-from-before", "no-owner"],
)
async def test_cron_fail_interrupted_only_lapsed_runs(
    store: CronStore, set_run_owner: SetRunOwner, owner: str | None, lease_until: float, interrupted: bool
) -> None:
    """fail_interrupted fails running rows whose lease ran out or owner is gone, error "interrupted"."""
    run_id = await store.claim("j1", T0 - 60, T0 - 60, lease_s=60)
    done = await store.claim("j1", T0 - 120, T0 - 120, lease_s=60)
    assert run_id is not None
    assert done is not None
    await store.finish(done, "succeeded", T0 - 100)
    await set_run_owner(store, run_id, owner, lease_until)
    assert await store.fail_interrupted(T0) == (1 if interrupted else 0)
    row = await store.run_row(run_id)
    if interrupted:
        assert (row["status"], row["error"], row["finished_at"]) == ("failed", "interrupted", rfc3339(T0))
    else:
        assert (row["status"], row["error"]) == ("running", None)
    assert (await store.run_row(done))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(50, [T0 + 600, T0 + 300, T0]), (2, [T0 + 600, T0 + 300]), (1, [T0 + 600])],
    ids=["all", "two", "one"],
)
async def test_cron_history_newest_occurrence_first(
    store: CronStore, limit: int, expected: list[float]
) -> None:
    """history lists one job's runs by scheduled_for descending, cut at limit, times in RFC 3339."""
    for t in (T0 + 300, T0, T0 + 600):
        await store.claim("j1", t, t, lease_s=60)
    await store.claim("other", T0 + 900, T0 + 900, lease_s=60)
    history = await store.history("j1", limit=limit)
    assert [r["scheduled_for"] for r in history] == [rfc3339(t) for t in expected]
    assert {r["job_id"] for r in history} == {"j1"}
    assert await store.history("unknown") == []


@pytest.mark.parametrize(
    ("since", "expected"),
    [(T0 - 1000, 1.75), (T0, 1.75), (T0 + 1, 1.5), (T0 + 10_000, 0.0)],
    ids=["everything", "at-boundary", "after-first", "future"],
)
async def test_cron_spend_since_sums_started_runs(store: CronStore, since: float, expected: float) -> None:
    """spend_since sums cost_usd of runs started at or after since (records without a start never count)."""
    a = await store.claim("j1", T0, T0, lease_s=60)
    b = await store.claim("j2", T0, T0 + 5, lease_s=60)
    c = await store.claim("j3", T0, T0 + 6, lease_s=60)  # no cost recorded
    assert a is not None
    assert b is not None
    assert c is not None
    await store.finish(a, "succeeded", T0 + 1, cost_usd=0.25)
    await store.finish(b, "succeeded", T0 + 6, cost_usd=1.5)
    await store.finish(c, "failed", T0 + 7, error="boom")
    await store.record("j4", T0, "missed", T0 + 1)
    assert await store.spend_since(since) == pytest.approx(expected)


# --- alerts -------------------------------------------------------------------------------


async def test_cron_drift_one_episode_per_job_until_closed(store: CronStore) -> None:
    """open_drift is True once per episode; close_drift ends it so the next one alerts again."""
    assert await store.open_drift("j1", "model moved", T0)
    assert not await store.open_drift("j1", "moved again", T0 + 5)
    assert await store.open_drift("j2", "provider moved", T0 - 10)
    assert await store.drift_episodes() == [
        {"job_id": "j2", "opened_at": rfc3339(T0 - 10), "detail": "provider moved"},
        {"job_id": "j1", "opened_at": rfc3339(T0), "detail": "model moved"},
    ]
    assert await store.close_drift("j1")
    assert not await store.close_drift("j1")
    assert await store.open_drift("j1", "again", T0 + 9)
    assert [e["detail"] for e in await store.drift_episodes()] == ["provider moved", "again"]


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (["2024-05-01"], [True]),
        (["2024-05-01", "2024-05-01"], [True, False]),
        (["2024-05-01", "2024-05-02", "2024-05-01"], [True, True, False]),
    ],
    ids=["first", "same-day-twice", "next-day"],
)
async def test_cron_budget_alert_once_per_day(
    store: CronStore, days: list[str], expected: list[bool]
) -> None:
    """budget_alert_once is True the first time a day is seen, False after."""
    assert [await store.budget_alert_once(day, T0 + i) for i, day in enumerate(days)] == expected
