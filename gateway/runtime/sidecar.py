"""The composition root: wires config, state.db, the relay transport, the inbox, the board,
the cron scheduler, the idle watcher and the HTTP server into one running sidecar.

Start-up is one ordered list (``Sidecar._open``): each service is entered on one
``contextlib.AsyncExitStack`` once what it needs is open, so shutdown is that list reversed.
Beside it: ``services`` (the stack's services, the task set), ``status`` (``/status``, gauges,
overview), ``discovery`` (sidecar.json), ``inbound`` (admission, the blocked-task reply, cron to
board) and ``fly`` (suspend after the cooldown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from common.clock import Clock, SystemClock
from common.listen import bind_listener, prepare_home
from common.sqlite import run_tx
from common.tasks import TaskSet
from gateway.agent.spend import SpendLedger
from gateway.config import Config, load_config
from gateway.conversation.chat import Conversation
from gateway.conversation.store import SessionStore
from gateway.core.activity import Activity
from gateway.core.policy import ArmInputs, arm_blockers
from gateway.core.resume import ResumeDetector
from gateway.core.watcher import WatchState
from gateway.cron.runner import CronContext
from gateway.cron.scheduler import CronScheduler
from gateway.cron.store import CronStore
from gateway.http.server import build_app, build_internal_app
from gateway.inbox.store import InboxStore
from gateway.kanban.board import Board
from gateway.kanban.execute import TaskExecutor
from gateway.kanban.sources import add_inbound_tasks
from gateway.kanban.store import TaskStore
from gateway.metrics import Metrics
from gateway.ops.recorder import OpsRecorder
from gateway.runtime import services, status
from gateway.runtime.deliveries import Deliveries
from gateway.runtime.discovery import Discovery
from gateway.runtime.fly import FlySuspend
from gateway.runtime.inbound import Inbound, bot_id_for
from gateway.runtime.inbox_worker import InboxWorker, relay_send
from gateway.runtime.watcher import IdleWatcher
from gateway.statedb import open_state_db
from gateway.telemetry.writer import TelemetryWriter
from relay.protocol.frames import DEFAULT_MAX_MESSAGE_LENGTH
from relay.protocol.sockets import Dial

log = logging.getLogger("gateway.sidecar")

SHUTDOWN_FLIP_BUDGET_S = 2.0


class Sidecar:
    """One sidecar process. ``await start()``, then ``await serve_forever()`` or ``shutdown()``.

    ``host``/``port``: where the HTTP surface listens (port 0 picks a free one; ``self.port``
    then holds it). ``env`` is the environment used for provider keys and Fly ids.

    ``metrics_port``: the internal port serving ``/metrics`` on the same host (SPEC 8.3).
    ``None`` (the default here) serves none; an int is a port, 0 a free one (``self.metrics_port``
    then holds it). The CLI maps ``METRICS_PORT=0`` / ``--metrics-port 0`` ("off") to ``None``.

    ``loader``: how a reload (SIGHUP, ``/admin/notify``) reads the config again; default
    ``load_config(config.home, env, strict=True)``. ``dev`` passes one that re-applies its
    demo overrides. ``dial`` opens the relay socket (default: aiohttp; the simulator's link).
    ``wal_clock`` times the WAL checkpointer: real time by default whatever ``clock`` is (the
    log grows with real writes); the simulator passes its virtual clock.
    """

    def __init__(
        self,
        config: Config,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
        loader: Callable[[], Config] | None = None,
        dial: Dial | None = None,
        wal_clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.metrics_port = metrics_port
        self._loader = loader
        self.dormant_since: float | None = None  # wall time of the last entry into dormant
        self.clock: Clock = clock or SystemClock()
        self._wal_clock: Clock = wal_clock or SystemClock()
        self.env = dict(os.environ if env is None else env)
        self.metrics = Metrics()
        self.activity = Activity(self.clock)
        self.resume = ResumeDetector(self.clock.wall(), self.clock.monotonic())
        self.admin_token = secrets.token_hex(16)
        self.last_poke_at: float | None = None
        self.presence_streams = 0
        self.transport = services.relay_transport(
            config,
            self.clock,  # the transport exists before start(); ``inbound`` once started
            on_inbound=lambda frames: self.inbound.admit(frames),
            on_interrupt=lambda frame: self.inbound.interrupt(frame),
            dial=dial,
        )
        self.blockers = arm_blockers(
            ArmInputs(
                enabled=config.scale_to_zero.enabled,
                relay_only=True,
                wake_url=config.wake_url,
                relay_configured=self.transport is not None,
                external_waker=config.scale_to_zero.external_waker,
            )
        )
        self.watcher = IdleWatcher(
            clock=self.clock,
            settings=config.scale_to_zero,
            activity=self.activity,
            transport=self.transport,
            blockers=self.blockers,
        )
        self.suspend = FlySuspend(
            config, self.env, self.clock, lambda: self.watcher.state is WatchState.DORMANT
        )
        self.watcher.on_dormant.append(self._entered_dormant)
        self.watcher.on_live.append(self._left_dormant)
        self.discovery = Discovery(config.home)
        self._background = TaskSet()  # the loops and one-off tasks; cancelled and awaited at shutdown
        self._stack: contextlib.AsyncExitStack | None = None  # the open services, once started
        self._runner: web.AppRunner | None = None
        self._internal_runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._started = False  # the scheduler and the board exist (built in start())

    @property
    def fly_api_socket(self) -> str:
        """The Machines API unix socket (``/.fly/api``; tests point it elsewhere)."""
        return self.suspend.socket_path

    @fly_api_socket.setter
    def fly_api_socket(self, path: str) -> None:
        self.suspend.socket_path = path

    @property
    def _suspend_task(self) -> asyncio.Task[None] | None:
        return self.suspend.task

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open state, serve HTTP, queue unfinished inbox work, start the relay and watcher.

        Raises ``StartupError`` (before anything else opens) when the app port or the internal
        (metrics) port is in use or ``$HERMES_HOME`` cannot be created or written. Whatever a
        failed start opened is closed again (in reverse) before the error is raised.
        """
        listener = bind_listener(self.host, self.port, "sidecar HTTP")
        internal: socket.socket | None = None
        stack = contextlib.AsyncExitStack()
        try:
            if self.metrics_port is not None:
                internal = bind_listener(self.host, self.metrics_port, "sidecar metrics")
                self.metrics_port = internal.getsockname()[1]
            prepare_home(self.config.home)
            self.port = listener.getsockname()[1]
            await self._open(stack, listener, internal)
        except BaseException as exc:
            listener.close()
            if internal is not None:
                internal.close()
            with contextlib.suppress(Exception):  # the cause is what start() raises
                await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        log.info(
            "hermes-sidecar started on http://%s:%d (state %s, home %s, metrics %s)",
            self.host,
            self.port,
            self.state_name(),
            self.config.home,
            f"on port {self.metrics_port}" if self.metrics_port is not None else "off",
        )

    async def _open(
        self, stack: contextlib.AsyncExitStack, listener: socket.socket, internal: socket.socket | None
    ) -> None:
        """The start order. Each step enters its service on ``stack``; shutdown runs the exits
        in reverse: the board stops (bounded), the relay flips (2 s) and disconnects, the
        background tasks are cancelled and awaited, the Fly suspend too, HTTP stops serving,
        telemetry and the operator history are flushed, the HTTP client and state.db close,
        and sidecar.json goes away."""
        stack.callback(self.discovery.remove)
        self.db = await open_state_db(self.config.state_db)
        stack.push_async_callback(self.db.close)
        await stack.enter_async_context(
            services.checkpointing(str(self.config.state_db), self.db, self._wal_clock)
        )
        self.http = aiohttp.ClientSession()
        stack.push_async_callback(self.http.close)
        self.inbox = InboxStore(self.db)
        # State history for the operator page (SPEC 8.5): hooks queue rows, never block.
        self.ops = OpsRecorder(self.db, clock=self.clock, metrics=self.metrics, transport=self.transport)
        await stack.enter_async_context(services.recording(self.ops, lambda: self.watcher.state.value))
        self.watcher.on_transition.append(self.ops.on_watcher)
        self.watcher.on_wake.append(self.ops.on_wake)
        if self.transport is not None:
            self.transport.listeners.append(self.ops.on_relay)
        self.telemetry = TelemetryWriter(
            self.db,
            clock=self.clock,
            on_record=self.metrics.observe_skill,
            on_dropped=self.metrics.telemetry_dropped.inc,
        )
        self.telemetry.start()
        stack.push_async_callback(self.telemetry.aclose)
        self._build()
        sites = [(build_app(self), listener)]
        if internal is not None:
            sites.append((build_internal_app(self), internal))
        runners = await stack.enter_async_context(services.serving(sites))
        self._runner, self._internal_runner = runners[0], (runners[1] if internal is not None else None)
        self.discovery.write(host=self.host, port=self.port, token=self.admin_token)
        leftover = await self.inbox.unfinished()
        if leftover:
            log.info("resuming %d unfinished inbox item(s) from the last run", len(leftover))
            now = self.clock.wall()  # a no-op for items whose task exists
            await run_tx(self.db, lambda conn: add_inbound_tasks(conn, leftover, now))
        stack.push_async_callback(self.suspend.aclose)
        stack.push_async_callback(self._background.aclose)
        self._background.spawn(self.board.run(), name="dispatch-board")
        retention = services.retention(self.db, self.ops, self.config, self.clock)
        self._background.spawn(retention, name="history-retention")
        await stack.enter_async_context(services.relay(self.transport, SHUTDOWN_FLIP_BUDGET_S, self.clock))
        self._background.spawn(self.scheduler.run(), name="cron-scheduler")
        self._background.spawn(self.watcher.run(), name="idle-watcher")
        stack.push_async_callback(self._stop_accepting)

    def _build(self) -> None:
        """The stores, the cron context, the inbox worker, the board and the scheduler (nothing
        here opens or runs anything) and the hooks between them."""
        self.cron_store = CronStore(self.db)
        self.deliveries = Deliveries(self.cron_store.deliveries, self.transport, self.clock, self.activity)
        self.cron_ctx = CronContext(
            config=self.config,
            store=self.cron_store,
            clock=self.clock,
            http=self.http,
            env=self.env,
            deliver=self.deliver,
            telemetry=self.telemetry,
            on_start=self.ops.on_cron_start,
        )
        t = self.transport
        self.worker = InboxWorker(
            inbox=self.inbox,
            config=self.config,
            http=self.http,
            env=self.env,
            clock=self.clock,
            send=relay_send(
                t,
                lambda: self.board.accepting,
                self.clock,
                give_up_hours=self.config.delivery_give_up_hours,
                bot_id_for=lambda platform: bot_id_for(self.config, platform),
            ),
            chunk_limit=lambda: t.max_message_length if t is not None else DEFAULT_MAX_MESSAGE_LENGTH,
            on_report=self.metrics.observe_turn,
            ledger=SpendLedger(self.db),
            on_model_retry=self.metrics.model_retries.inc,
            conversation=Conversation(SessionStore(self.db), self.config),
        )
        self.tasks = TaskStore(self.db)
        self.inbound = Inbound(
            inbox=self.inbox,
            tasks=self.tasks,
            board=lambda: self.board,
            worker=self.worker,
            ops=self.ops,
            metrics=self.metrics,
            activity=self.activity,
            clock=self.clock,
            background=self._background,
        )
        self.board = Board(
            self.tasks,
            config=self.config,
            clock=self.clock,
            activity=self.activity,
            execute=TaskExecutor(self.cron_ctx, self.inbox, self.worker.turn),
            on_blocked=self.inbound.task_blocked,
        )
        self.scheduler = CronScheduler(
            self.cron_ctx,
            activity=self.activity,
            max_concurrent=self.config.cron_max_concurrent,
            on_due=self._on_due,
            run_fn=self.inbound.run_cron_task,
        )
        self._started = True
        self.scheduler.on_planned = self.watcher.kick
        self.watcher.next_due_wall = lambda: self.scheduler.next_due
        if self.transport is not None:
            self.transport.listeners.append(self.deliveries.on_transport_change)

    async def _stop_accepting(self) -> None:
        """The first step of shutdown: no new turns, /presence streams end (this process is
        going away), running tasks finish within ``shutdown_timeout_s``."""
        self.board.accepting = False
        self.watcher.dormant.set()
        await self.board.stop(self.config.shutdown_timeout_s)

    async def serve_forever(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        """Graceful stop: no new turns, running turns finish (bounded), flip, exit cleanly; the
        start order reversed (``_open``). A no-op when not started (or already stopped).

        Unfinished inbox items stay ``pending``/``running`` in state.db for the next start.
        """
        stack, self._stack = self._stack, None
        if stack is None:
            return
        log.info("shutdown: accepting no new turns; %d task(s) running", self.board.running)
        await stack.aclose()
        log.info("shutdown complete")

    # --- config reload -----------------------------------------------------------------------

    def reload_config(self) -> bool:
        """Re-read config.yaml and the environment (SIGHUP, every ``/admin/notify``, SPEC 8.3)
        into the shared ``Config``; False (and the current config kept) when it does not load.
        See ``services.reload_config``."""
        load = self._loader or (lambda: load_config(self.config.home, self.env, strict=True))
        if not services.reload_config(self.config, load):
            return False
        if self._started:
            self.board.kick()
        return True

    # --- wake, resume, dormancy ----------------------------------------------------------

    def on_poke(self) -> None:
        """A poke, a resume or a change notification: the scheduler re-plans at once."""
        if self._started:
            self.scheduler.replan()
            self.board.kick()

    async def deliver(self, platform: str, chat_id: str, text: str) -> None:
        """Cron results and alerts: see ``Deliveries.deliver``."""
        await self.deliveries.deliver(platform, chat_id, text)

    async def run_job_now(self, job_id: str) -> dict[str, Any] | None:
        """``cron run``: one occurrence now through the scheduler's path; the ledger row."""
        job = await self.cron_store.get(job_id)
        if job is None:
            return None
        with self.activity.work("job"):
            run_id = await self.inbound.run_cron_task(self.cron_ctx, job, self.clock.wall())
        return None if run_id is None else await self.cron_store.run_row(run_id)

    def check_resume(self) -> None:
        """Wake if the wall clock jumped against the monotonic one (a resumed machine)."""
        jump = self.resume.check(self.clock.wall(), self.clock.monotonic())
        if jump is not None:
            log.info("resume detected: wall clock moved %.1f s against monotonic", jump)
            self.watcher.wake("resume")
            self.on_poke()

    def _on_due(self) -> None:
        self.watcher.wake("due job")

    def _entered_dormant(self) -> None:
        self.dormant_since = self.clock.wall()
        self.metrics.transitions.labels(state="dormant").inc()
        self.suspend.dormant()

    def _left_dormant(self) -> None:
        self.metrics.transitions.labels(state="live").inc()
        self.suspend.live()

    # --- status (gateway/runtime/status.py) ------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        return await status.overview(self)

    def refresh_gauges(self) -> None:
        status.refresh_gauges(self)

    def state_name(self) -> str:
        return status.state_name(self.transport, self.watcher)

    async def status(self) -> dict[str, Any]:
        return await status.status_document(self)
