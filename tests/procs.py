"""Run the real console programs as processes on 127.0.0.1 and wait on their log lines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose combined output is read line by line into ``lines``."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        # METRICS_PORT=0: a sidecar's internal port is off unless a test asks for one, so
        # concurrent sidecars never fight over the default 9091.
        self.env = {**os.environ, "METRICS_PORT": "0", **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Proc:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._new_line.set()
        self._new_line.set()

    async def wait_for_line(self, needle: str, timeout: float = 20.0, start: int = 0) -> str:
        """Return the first output line (from index ``start``) containing ``needle``."""

        async def scan() -> str:
            i = start
            while True:
                while i < len(self.lines):
                    if needle in self.lines[i]:
                        return self.lines[i]
                    i += 1
                if (
                    self.proc is not None
                    and self.proc.returncode is not None
                    and (self._reader is None or self._reader.done())
                ):
                    raise AssertionError(f"process exited before {needle!r}:\n" + self.output)
                self._new_line.clear()
                await self._new_line.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(f"no line with {needle!r} in {timeout} s:\n{self.output}") from None

    @property
    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return rc

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


def relay_cmd(port: int, db: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        db,
        *extra,
    ]


EXIT_WITHIN_S = 5.0
"""How soon a start that cannot work must have exited, seconds (SPEC 8.1)."""


async def fails_fast(args: list[str], home: Path) -> list[str]:
    """Run ``python -m gateway <args>`` with ``HERMES_HOME=home``; assert it exits non-zero
    within 5 s without a traceback; return its output lines."""
    started = time.monotonic()
    p = await Proc([sys.executable, "-m", "gateway", *args], env={"HERMES_HOME": str(home)}).start()
    try:
        rc = await p.wait(timeout=EXIT_WITHIN_S)
    except TimeoutError:
        raise AssertionError(f"still running after {EXIT_WITHIN_S} s:\n{p.output}") from None
    finally:
        await p.stop()
    assert time.monotonic() - started < EXIT_WITHIN_S
    assert rc != 0, p.output
    assert not any("Traceback" in line for line in p.lines), p.output
    return p.lines
