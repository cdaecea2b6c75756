"""One schedule, start to quiescence, and its verdict.

The driver owns virtual time: it lets the loop run until nothing is runnable (``quiesce``),
then moves the ``FakeClock`` to the next sleeper's deadline, and again, until every accepted
message is answered and nothing is left buffered or unfinished (or ``TAIL_S`` of virtual time
past the last message). Crashes are ``kill -9`` (``world.Process.kill``) followed by a fresh
process on the same files; a crash "at a frame boundary" happens a drawn number of loop turns
after a given delivered frame, so it lands inside that frame's handling.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import random
import sqlite3
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from common.clock import FakeClock
from common.errors import TransitionError
from gateway.config import load_config
from gateway.runtime.sidecar import Sidecar
from relay.connector.server import Connector
from sim.db import DbFaults
from sim.link import Link
from sim.outside import Outside
from sim.schedule import Crash, Schedule, draw
from sim.verdict import TransitionCapture, Verdict, answers, judge, leftovers
from sim.world import Process, task_factory

QUIET_ROUNDS = 3
MAX_ROUNDS = 200_000
TAIL_S = 6 * 3600.0
"""Virtual time a schedule may run past its last message before what is left counts as stranded."""

SIDECAR_CONFIG = """\
model: {{default: sim-model, provider: sim}}
providers: {{sim: {{base_url: 'http://provider.sim/v1'}}}}
gateway: {{scale_to_zero: {{idle_timeout_minutes: {idle}, cooldown_seconds: {cooldown},
  ack_timeout_seconds: {ack}}}}}
"""
SIDECAR_ENV = {
    "HERMES_SCALE_TO_ZERO": "1",
    "GATEWAY_RELAY_URL": "ws://connector.sim/relay",
    "GATEWAY_RELAY_WAKE_URL": "http://sidecar.sim/wake",
}


class Run:
    """The world of one schedule (see the module doc). ``await Run(schedule, root).go()``."""

    def __init__(self, schedule: Schedule, root: Path) -> None:
        self.s = schedule
        self.root = root
        self.clock = FakeClock(wall=1_800_000_000.0, monotonic=1_000.0)
        self.start_mono = self.clock.monotonic()
        self.v = Verdict(seed=schedule.seed)
        self.draw = schedule.rng.random
        self._base = contextvars.copy_context()  # no process: the network and the driver
        self._tasks: set[asyncio.Task[Any]] = set()
        self.link = Link(
            self.clock,
            self.draw,
            schedule.link,
            self.note,
            self.count,
            spawn=self._background,
            spawn_connector=self._spawn_connector,
        )
        self.link.on_delivered = self._on_delivered
        self.db_faults = DbFaults(self.draw, self.clock, schedule.sqlite_busy, schedule.sqlite_slow_read)
        self.sidecar: Process | None = None
        self.connector: Process | None = None
        self.outside = Outside(
            schedule,
            self.clock,
            sidecar=lambda: self.sidecar,
            connector=lambda: self.connector,
            note=self.note,
            count=self.count,
            sent=lambda: answers(self.root / "relay.db"),
            violate=self.v.violations.append,
        )
        self.generation = Counter[str]()
        self.pending_crashes = list(schedule.crashes)
        self.restarts_pending = 0

    # --- trace ---------------------------------------------------------------------------

    def note(self, what: str) -> None:
        self.v.trace.append(f"{self.clock.monotonic() - self.start_mono:10.3f} {what}")

    def count(self, kind: str) -> None:
        self.v.faults[kind] += 1

    # --- tasks ---------------------------------------------------------------------------

    def _background(self, aw: Any) -> None:
        """A task of no process (the network, the driver): no crash cancels it."""

        async def run() -> Any:
            return await aw

        task = asyncio.get_running_loop().create_task(run(), context=self._base)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._harness_failed)

    def _harness_failed(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.note(f"harness task failed: {type(exc).__name__}: {exc}")
            self.v.violations.append(f"harness task failed: {type(exc).__name__}: {exc}")

    def _spawn_connector(self, aw: Any) -> None:
        if self.connector is not None and self.connector.alive:
            self.connector.spawn(aw)

    # --- processes -----------------------------------------------------------------------

    async def start_connector(self) -> None:
        self.generation["connector"] += 1
        proc = Process("connector", self.generation["connector"], self.db_faults)
        self.connector = proc
        try:
            connector = await proc.call(Connector.create(str(self.root / "relay.db"), clock=self.clock))
        except asyncio.CancelledError:
            if proc.alive:
                raise
            return  # killed while starting: the crash restarts it
        proc.app = connector
        self.link.serve = connector.ws.serve
        self.note(f"connector #{proc.generation} started")

    async def start_sidecar(self) -> None:
        self.generation["sidecar"] += 1
        proc = Process("sidecar", self.generation["sidecar"], self.db_faults)
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        s = self.s
        text = SIDECAR_CONFIG.format(idle=s.idle_timeout_min, cooldown=s.cooldown_s, ack=s.ack_timeout_s)
        (home / "config.yaml").write_text(text)
        sc = Sidecar(
            load_config(home, SIDECAR_ENV),
            port=0,
            clock=self.clock,
            env={},
            dial=self.link.dial,
            wal_clock=self.clock,
        )
        self.sidecar = proc
        proc.app = sc
        try:
            await proc.call(sc.start())
        except asyncio.CancelledError:
            if proc.alive:
                raise
            return  # killed while starting: the crash restarts it
        if s.sqlite_fail:
            self._failing_admission(sc, s.sqlite_fail)
        self.note(f"sidecar #{proc.generation} started")

    def _failing_admission(self, sc: Sidecar, chance: float) -> None:
        """The sidecar's inbox transaction for an inbound batch fails now and then (the disk
        under it): nothing is stored, so nothing may be acked (PROTOCOL 7.3)."""
        admit = sc.inbox.admit

        async def failing(*args: Any, **kwargs: Any) -> Any:
            if self.draw() < chance:
                self.count("sqlite_fail")
                self.note("inbox admission failed: disk I/O error")
                raise sqlite3.OperationalError("disk I/O error")
            return await admit(*args, **kwargs)

        sc.inbox.admit = failing  # type: ignore[method-assign]

    async def crash(self, side: str, why: str, *, fault: bool = True) -> bool:
        """``kill -9`` of ``side`` (a fault unless the run is over), then what the OS would
        close: its listening socket and HTTP client sessions (nothing durable). False when
        that process was not running (already dead, or not started yet)."""
        proc = self.sidecar if side == "sidecar" else self.connector
        if proc is None or not proc.alive:
            return False
        if fault:
            self.count(f"crash_{side}")
            self.note(f"kill -9 {side} #{proc.generation} ({why})")
        self.link.sever(side)
        await proc.kill()
        app = proc.app
        if isinstance(app, Sidecar):
            if app._runner is not None:
                await app._runner.cleanup()
            http = getattr(app, "http", None)  # made early in start()
            if http is not None:
                await http.close()
        elif isinstance(app, Connector) and app._http is not None:
            await app._http.close()
        return True

    async def _crash_then_restart(self, c: Crash, steps: int) -> None:
        for _ in range(steps):
            await asyncio.sleep(0)
        if not await self.crash(c.side, "at a frame boundary" if c.after is not None else "scheduled"):
            self.restarts_pending -= 1  # it was down already: its own restart is on its way
            return
        await self.clock.sleep(c.restart_s)
        if c.side == "sidecar":
            await self.start_sidecar()
        else:
            await self.start_connector()
        self.restarts_pending -= 1

    def _on_delivered(self, side: str, n: int) -> None:
        for c in list(self.pending_crashes):
            if c.after is not None and c.side == side and c.after == n:
                self.pending_crashes.remove(c)
                self.restarts_pending += 1
                self._background(self._crash_then_restart(c, c.steps))

    async def _timed_crash(self, c: Crash) -> None:
        await self.clock.sleep(c.at)
        if c in self.pending_crashes:
            self.pending_crashes.remove(c)
            self.restarts_pending += 1
            await self._crash_then_restart(c, 0)

    # --- the driver ----------------------------------------------------------------------

    async def quiesce(self) -> None:
        """Run the loop until only sleepers on the fake clock are left. Raises RuntimeError
        (a livelock, naming where the spinning tasks stand) after ``MAX_ROUNDS`` turns."""
        loop = asyncio.get_running_loop()
        quiet = 0
        for _ in range(MAX_ROUNDS):
            await asyncio.sleep(0)
            if loop._ready:  # type: ignore[attr-defined]  # asyncio's run queue
                quiet = 0
                continue
            quiet += 1
            if quiet >= QUIET_ROUNDS:
                return
        spinning = sorted({_where(h) for h in loop._ready})  # type: ignore[attr-defined]
        raise RuntimeError(f"livelock: the loop never went quiet in {MAX_ROUNDS} rounds: {spinning}")

    def _settled(self) -> bool:
        if not self.outside.workload_done or self.pending_crashes or self.restarts_pending:
            return False
        for proc in (self.sidecar, self.connector):
            if proc is None or not proc.alive:
                return False
        if len(answers(self.root / "relay.db")) < len(self.outside.accepted):
            return False
        return not leftovers(self.root / "relay.db", self.root / "home" / "state.db")

    async def go(self) -> Verdict:
        capture = TransitionCapture(self.v)
        logging.getLogger().addHandler(capture)
        loop = asyncio.get_running_loop()
        loop.set_task_factory(task_factory)
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._unhandled)
        try:
            with self.outside.http():
                await self._drive()
        finally:
            await self.crash("sidecar", "end", fault=False)
            await self.crash("connector", "end", fault=False)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)
            loop.set_task_factory(None)
            loop.set_exception_handler(previous_handler)
            logging.getLogger().removeHandler(capture)
        self.v.virtual_s = self.clock.monotonic() - self.start_mono
        judge(self.v, self.outside.accepted, self.root / "relay.db", self.root / "home" / "state.db")
        self.v.faults.update(self.db_faults.counts)
        return self.v

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """A task that died of an illegal transition nobody awaited is a violation too."""
        exc = context.get("exception")
        if isinstance(exc, TransitionError):
            self.v.violations.append(f"illegal transition (unhandled): {exc}")

    async def _boot(self) -> None:
        await self.start_connector()
        await self.start_sidecar()

    async def _drive(self) -> None:
        self._background(self._boot())
        self._background(self.outside.workload())
        self._background(self.outside.early_pokes())
        for c in self.s.crashes:
            if c.after is None:
                self._background(self._timed_crash(c))
        last = self.s.messages[-1].at if self.s.messages else 0.0
        deadline = self.clock.monotonic() + last + TAIL_S
        while True:
            try:
                await self.quiesce()
            except RuntimeError as exc:
                self.v.violations.append(str(exc))
                return
            if self._settled():
                return
            pending = self.clock.pending
            if not pending:
                self.v.violations.append("deadlock: nothing left to run and work is unfinished")
                return
            if self.clock.monotonic() + pending[0] > deadline:
                return
            await self.clock.advance(pending[0])


def _where(handle: Any) -> str:
    """Where a ready callback's task stands (its coroutine chain), for a livelock report."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
    chain = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None)
    return " > ".join(chain[-4:]) if chain else repr(handle)[:80]


def _scratch_dir() -> str | None:
    """``/dev/shm`` when there is one: fsync there is free; durability is still the code's."""
    return "/dev/shm" if Path("/dev/shm").is_dir() else None


async def run_seed(seed: int, root: Path | None = None) -> Verdict:
    """Draw and run the schedule of ``seed`` (in ``root``, or a temporary directory). Seeds
    the ``random`` module and makes ``uuid.uuid4`` a counter for the run, so ids in frames and
    rows (and so the trace) are the same every time."""
    random.seed(seed)
    counter = [seed << 32]

    def seeded_uuid4() -> uuid.UUID:
        counter[0] += 1
        return uuid.UUID(int=counter[0] * 0x9E3779B97F4A7C15 % (1 << 128), version=4)

    original = uuid.uuid4
    uuid.uuid4 = seeded_uuid4
    # A statement abandoned by a cancelled reader lives as long as its cursor: in a long-lived
    # process a cursor caught in a reference cycle (a traceback) can outlive the snapshot it
    # froze until a collection runs. No collection during a schedule: such bugs stay visible.
    gc.disable()
    try:
        if root is not None:
            return await Run(draw(seed), root).go()
        with tempfile.TemporaryDirectory(prefix=f"sim-{seed}-", dir=_scratch_dir()) as tmp:
            return await Run(draw(seed), Path(tmp)).go()
    finally:
        uuid.uuid4 = original
        gc.enable()
        gc.collect()
