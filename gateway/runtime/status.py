"""What a running sidecar says about itself: the state name, the ``/status`` document (SPEC
section 2), the point-in-time gauges of ``/metrics`` and the operator overview (SPEC 8.5).

Each function reads the parts it needs from a ``StatusSource`` (the ``Sidecar`` is one) and
changes nothing but the gauges."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import aiosqlite

from common.clock import Clock
from common.timefmt import rfc3339
from gateway.agent.spend import SpendLedger
from gateway.config import Config
from gateway.core.activity import Activity
from gateway.core.watcher import WatchState
from gateway.cron.scheduler import CronScheduler
from gateway.cron.store import CronStore
from gateway.kanban.board import Board
from gateway.kanban.store import TaskStore
from gateway.metrics import Metrics
from gateway.ops.overview import build_overview
from gateway.ops.recorder import OpsRecorder
from gateway.runtime.watcher import IdleWatcher
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport


class StatusSource(Protocol):
    """The sidecar members the status functions read (``board`` and what follows: once
    started)."""

    @property
    def clock(self) -> Clock: ...
    @property
    def config(self) -> Config: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def activity(self) -> Activity: ...
    @property
    def transport(self) -> RelayTransport | None: ...
    @property
    def watcher(self) -> IdleWatcher: ...
    @property
    def blockers(self) -> list[str]: ...
    @property
    def dormant_since(self) -> float | None: ...
    @property
    def db(self) -> aiosqlite.Connection: ...
    @property
    def ops(self) -> OpsRecorder: ...
    @property
    def board(self) -> Board: ...
    @property
    def tasks(self) -> TaskStore: ...
    @property
    def scheduler(self) -> CronScheduler: ...
    @property
    def cron_store(self) -> CronStore: ...


def state_name(transport: RelayTransport | None, watcher: IdleWatcher) -> str:
    """``revoked``, ``cron-only`` (no relay, live) or the watcher's state."""
    if transport is not None and transport.state is ConnState.REVOKED:
        return "revoked"
    if transport is None and watcher.state is WatchState.LIVE:
        return "cron-only"
    return watcher.state.value


def refresh_gauges(sc: StatusSource) -> None:
    """Bring the point-in-time gauges of ``/metrics`` up to date."""
    t, w, m = sc.transport, sc.watcher, sc.metrics
    m.running.set(sum(sc.activity.running.values()))
    for s in ("live", "draining", "dormant"):
        m.state.labels(state=s).set(1 if w.state.value == s else 0)
    m.relay_connected.set(1 if t is not None and t.connected else 0)
    m.sync_dial_attempts(t.dial_attempts if t is not None else 0)


async def overview(sc: StatusSource) -> dict[str, Any]:
    """The operator overview (``GET /api/overview``, the page's data; SPEC 8.5)."""
    await sc.ops.sync_cron_runs()
    state = state_name(sc.transport, sc.watcher)
    return await build_overview(sc.db, sc.config, sc.env, state, sc.clock.wall())


async def status_document(sc: StatusSource) -> dict[str, Any]:
    """The ``/status`` document (SPEC section 2)."""
    clock, t, w = sc.clock, sc.transport, sc.watcher
    now = clock.monotonic()
    cooldown = None
    if w.cooldown_until is not None and w.cooldown_until > now:
        cooldown = rfc3339(clock.wall() + (w.cooldown_until - now))
    last = sc.activity.last_inbound_wall
    return {
        "state": state_name(t, w),
        "armed": w.armed,
        "arm_blockers": list(sc.blockers),
        "last_inbound_at": rfc3339(last) if last is not None else None,
        "idle_for_s": round(now - sc.activity.idle_since, 3),
        "idle_timeout_s": sc.config.scale_to_zero.idle_timeout_s,
        "cooldown_until": cooldown,
        "dormant_since": (
            rfc3339(sc.dormant_since)
            if w.state is WatchState.DORMANT and sc.dormant_since is not None
            else None
        ),
        "running_turns": sc.board.running,  # every agent turn is a board task
        "tasks": await sc.tasks.counts(),
        "next_job_due_at": (rfc3339(sc.scheduler.next_due) if sc.scheduler.next_due is not None else None),
        "jobs_may_run_late": bool(w.state is WatchState.DORMANT and (t is None or not t.supports_wake_at)),
        "drift_alerts": await sc.cron_store.drift_episodes(),
        "substitution_alerts": await SpendLedger(sc.db).substitutions(),
        "relay": {
            "connected": bool(t is not None and t.connected),
            "dial_attempts": t.dial_attempts if t is not None else 0,
            "last_close_code": t.last_close_code if t is not None else None,
            "supports_wake_at": bool(t is not None and t.supports_wake_at),
        },
    }
