"""The services the composition root (``sidecar.py``) enters on its one ``AsyncExitStack``, each
an async context manager whose exit is its part of shutdown, and the background pieces it runs:

- ``recording``: the operator history's ``stopped -> <state>`` and ``<state> -> stopped`` rows;
- ``checkpointing``: state.db's WAL checkpoints, off the connection every store shares;
- ``serving``: the aiohttp apps on their bound sockets;
- ``relay``: the transport's start, and at exit one bounded flip and the terminal disconnect
  (``relay_transport`` builds the transport from the config);
- ``retention``: the daily history prune loop;
- ``reload_config``: a config re-read into the one shared ``Config`` (SIGHUP, ``/admin/notify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiosqlite
from aiohttp import web

from common.clock import Clock, wait_with_timeout
from common.errors import StartupError
from common.wal import WalCheckpointer
from gateway.config import Config
from gateway.conversation.store import SessionStore
from gateway.ops.recorder import OpsRecorder
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport, TransportConfig
from relay.protocol.sockets import Dial

log = logging.getLogger("gateway.sidecar")


@contextlib.asynccontextmanager
async def recording(ops: OpsRecorder, state: Callable[[], str]) -> AsyncIterator[OpsRecorder]:
    """Record the process start (``stopped -> state()``); at a graceful stop record
    ``state() -> stopped`` and write what is queued (a failed start only writes the queue)."""
    ops.start(state())
    try:
        yield ops
    except BaseException:
        await ops.history.aclose()
        raise
    await ops.aclose(state())


@contextlib.asynccontextmanager
async def checkpointing(path: str, db: aiosqlite.Connection, clock: Clock) -> AsyncIterator[WalCheckpointer]:
    """state.db's WAL checkpoints off the shared connection (``common/wal.py``), for as long
    as the block runs: started, then cancelled and the automatic checkpoint restored. ``clock``
    is real time in the sidecar whatever drives the rest (the log grows with real writes); the
    simulator passes its virtual clock (a real-time timer there would make a schedule's order
    depend on the machine's speed)."""
    checkpointer = WalCheckpointer(path, db, clock)
    await checkpointer.start()
    task = asyncio.create_task(checkpointer.run(), name="wal-checkpointer")
    try:
        yield checkpointer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await checkpointer.aclose()


@contextlib.asynccontextmanager
async def serving(sites: list[tuple[web.Application, socket.socket]]) -> AsyncIterator[list[web.AppRunner]]:
    """Serve each app on its bound socket; at exit stop them in the same order."""
    runners: list[web.AppRunner] = []
    try:
        for app, sock in sites:
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            runners.append(runner)
            await runner.setup()
            await web.SockSite(runner, sock).start()
        yield runners
    finally:
        for runner in runners:
            await runner.cleanup()


def relay_transport(
    config: Config,
    clock: Clock,
    *,
    on_inbound: Callable[[list[dict[str, Any]]], Awaitable[None]],
    on_interrupt: Callable[[dict[str, Any]], Awaitable[None]],
    dial: Dial | None = None,
) -> RelayTransport | None:
    """The relay transport the config asks for (not started); None without ``relay_url``.
    ``dial`` replaces aiohttp's dialer (the simulator's link)."""
    if not config.relay_url:
        return None
    return RelayTransport(
        TransportConfig(
            url=config.relay_url,
            identities=config.relay_identities,
            gateway_id=config.relay_id,
            secret=config.relay_secret,
            wake_url=config.wake_url,
            max_frame_bytes=config.relay_max_frame_bytes,
            ack_timeout_s=config.scale_to_zero.ack_timeout_s,
        ),
        on_inbound=on_inbound,
        on_interrupt=on_interrupt,
        clock=clock,
        dial=dial,
    )


@contextlib.asynccontextmanager
async def relay(transport: RelayTransport | None, flip_budget_s: float, clock: Clock) -> AsyncIterator[None]:
    """Start the relay transport (none: cron-only mode). At a graceful stop one flip, bounded
    by ``flip_budget_s`` (the relay then buffers for the next process); always the terminal
    disconnect."""
    t = transport
    if t is None:
        log.info("no relay configured: cron-only mode")
        yield
        return
    try:
        await t.start()
        yield
        if t.state is ConnState.CONNECTED:
            with contextlib.suppress(TimeoutError):
                flipped = await wait_with_timeout(clock, t.go_dormant(), flip_budget_s)
                log.info("shutdown: relay flip %s", "acknowledged" if flipped else "not acked")
    finally:
        await t.disconnect()


async def retention(db: aiosqlite.Connection, ops: OpsRecorder, config: Config, clock: Clock) -> None:
    """Delete conversation messages older than ``agent.history_retention_days`` (SPEC 8.2)
    and state history older than ``gateway.history_retention_days`` (SPEC 8.5): at start,
    then once a day."""
    sessions = SessionStore(db)
    while True:
        await ops.prune(config.ops_history_retention_days)
        cutoff = clock.wall() - config.history_retention_days * 86400.0
        try:
            pruned = await sessions.prune(cutoff)
        except Exception as exc:  # retention is housekeeping: never stop the sidecar for it
            log.warning("history retention failed: %s", exc)
        else:
            if pruned:
                log.info(
                    "history retention: %d message(s) older than %g day(s) deleted",
                    pruned,
                    config.history_retention_days,
                )
        await clock.sleep(86400.0)


def reload_config(config: Config, load: Callable[[], Config]) -> bool:
    """Re-read config.yaml and the environment with ``load`` (SIGHUP, every ``/admin/notify``,
    SPEC 8.3) and copy the new values into ``config``, the one object every component holds
    (``Config.update_from``), so the next turn, job or dispatch sees them. A config that does
    not load keeps the current one with one WARNING; False then. Settings fixed at start (the
    relay, the arm decision, cron concurrency) log one WARNING when changed."""
    try:
        fresh = load()
    except StartupError as exc:
        log.warning("config reload failed, keeping the current config: %s", exc)
        return False
    except Exception as exc:  # a loader bug must not take the sidecar down
        log.warning("config reload failed, keeping the current config: %s: %s", type(exc).__name__, exc)
        return False
    pending = config.update_from(fresh)
    if pending:
        log.warning("config reloaded; changed but only applied at the next start: %s", ", ".join(pending))
    else:
        log.info("config reloaded")
    return True
