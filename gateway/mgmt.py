"""Shared plumbing of the management commands: open state.db beside a running sidecar, find
and notify that sidecar through ``$HERMES_HOME/sidecar.json``, print JSON or text."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite

from common.clock import Clock
from gateway.config import Config
from gateway.cron.deliveries_store import DeliveryStore
from gateway.cron.runner import CronContext
from gateway.cron.store import CronStore
from gateway.statedb import open_state_db
from gateway.telemetry.writer import TelemetryWriter


class Exit(Exception):
    """Stop a command with an exit code and one line (2 = bad input, nothing written)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def open_db(config: Config) -> aiosqlite.Connection:
    return await open_state_db(config.state_db, synchronous="NORMAL")


def sidecar_info(config: Config) -> dict[str, Any] | None:
    """Port, pid and token of the running sidecar, or None."""
    try:
        info = json.loads(Path(config.home / "sidecar.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "port" in info and "token" in info else None


async def call_sidecar(config: Config, path: str, body: dict[str, Any]) -> tuple[int, Any] | None:
    """POST to the running sidecar's admin API; None when none answers."""
    info = sidecar_info(config)
    if info is None:
        return None
    url = f"http://127.0.0.1:{info['port']}{path}"
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {info['token']}"},
                timeout=aiohttp.ClientTimeout(total=300),
            ) as r,
        ):
            return r.status, await r.json()
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None


async def notify(config: Config) -> bool:
    """Tell a running sidecar to re-plan now; False when none is running."""
    return await call_sidecar(config, "/admin/notify", {}) is not None


def offline_cron_context(
    config: Config, store: CronStore, http: aiohttp.ClientSession, clock: Clock
) -> CronContext:
    """A cron context for running turns in a management command (no sidecar running):
    deliveries wait in state.db for the sidecar's next start, and telemetry goes to a writer
    that is not started, so the caller must ``await ctx.telemetry.flush()`` when done."""
    deliveries = DeliveryStore(store.db)

    async def deliver(platform: str, chat_id: str, text: str) -> None:
        await deliveries.queue(platform, chat_id, text, clock.wall())

    return CronContext(
        config=config,
        store=store,
        clock=clock,
        http=http,
        env=os.environ,
        deliver=deliver,
        telemetry=TelemetryWriter(store.db, clock=clock),
    )


def emit(as_json: bool, doc: Any, text: str) -> None:
    if as_json:
        json.dump(doc, sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        print(text)
