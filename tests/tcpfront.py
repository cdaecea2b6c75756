"""One address in front of N connector instances (a load balancer, faked at the TCP level):
each new connection goes to the next backend in turn; a backend that refuses is skipped, as a
proxy skips an instance whose health check fails."""

from __future__ import annotations

import asyncio
import contextlib


class TcpFront:
    """Listens on 127.0.0.1 (``port`` after ``start``) and pipes each connection to one of
    ``backends`` (ports), round-robin. ``landed`` records the backend port of each connection."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.landed: list[int] = []
        self._next = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> TcpFront:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(self.backends)):
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.landed.append(port)
            both = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            self._pipes.update(both)
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            for t in both:
                t.cancel()
                self._pipes.discard(t)
            up_writer.close()
            break
        writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

    async def close(self) -> None:
        for t in list(self._pipes):
            t.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
