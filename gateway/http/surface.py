"""What the HTTP handlers see of a running sidecar: ``SidecarSurface``, a ``Protocol`` of the
members they read, call or write, so ``gateway/http`` depends on this list and not on the
composition root (``gateway/runtime/sidecar.py``, which builds the apps with itself)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from common.clock import Clock
from gateway.config import Config
from gateway.core.watcher import WatchState
from gateway.kanban.dispatch import DispatchResult
from gateway.metrics import Metrics


class WatcherView(Protocol):
    """The idle watcher as ``/wake`` and ``/presence`` use it."""

    @property
    def state(self) -> WatchState: ...

    @property
    def dormant(self) -> asyncio.Event: ...

    def wake(self, reason: str) -> bool: ...


class BoardView(Protocol):
    """The kanban board as ``/admin/kanban/dispatch`` uses it."""

    @property
    def accepting(self) -> bool: ...

    async def tick(self, *, dry_run: bool = False) -> DispatchResult: ...


class OpsView(Protocol):
    """The operator-history recorder as ``/metrics`` uses it."""

    async def sync_cron_runs(self) -> None: ...


class SidecarSurface(Protocol):
    """The sidecar members the handlers use; ``last_poke_at`` and ``presence_streams`` are the
    two they write."""

    last_poke_at: float | None
    presence_streams: int

    @property
    def config(self) -> Config: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def admin_token(self) -> str: ...

    @property
    def watcher(self) -> WatcherView: ...

    @property
    def board(self) -> BoardView: ...

    @property
    def ops(self) -> OpsView: ...

    def check_resume(self) -> None: ...

    def on_poke(self) -> None: ...

    def state_name(self) -> str: ...

    def reload_config(self) -> bool: ...

    def refresh_gauges(self) -> None: ...

    async def status(self) -> dict[str, Any]: ...

    async def overview(self) -> dict[str, Any]: ...

    async def run_job_now(self, job_id: str) -> dict[str, Any] | None: ...
