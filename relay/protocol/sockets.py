"""What each side of the relay needs of a WebSocket, as protocols: aiohttp's sockets satisfy
them, and so does the simulator's in-memory link (``sim/link.py``), which is how the real
transport and the real connector session run under a fault schedule in one process.

Messages are aiohttp's ``WSMessage`` (``type``, ``data``, ``extra``) on both sides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol

import aiohttp


class ClientSocket(Protocol):
    """The gateway's end of one relay socket (``aiohttp.ClientWebSocketResponse``)."""

    @property
    def close_code(self) -> int | None:
        """The close code once the socket closed (None before)."""
        ...

    async def receive(self) -> aiohttp.WSMessage:
        """The next message; a CLOSE/CLOSED/ERROR message once the socket is gone."""
        ...

    async def send_str(self, data: str) -> None:
        """Queue one text message. Raises ``ConnectionError`` (or an aiohttp client error)
        when the socket is closing or closed."""
        ...

    async def ping(self, message: bytes = b"") -> None: ...

    async def pong(self, message: bytes = b"") -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Close with ``code``/``message``; False when it was already closed."""
        ...


class ServerSocket(Protocol):
    """The connector's end of one gateway socket (``aiohttp.web.WebSocketResponse``)."""

    def __aiter__(self) -> AsyncIterator[aiohttp.WSMessage]:
        """Messages until the socket closes (TEXT/BINARY; anything else ends the session)."""
        ...

    @property
    def closed(self) -> bool:
        """True once a close was sent or received."""
        ...

    async def send_str(self, data: str) -> None:
        """Queue one text message. Raises ``ConnectionError`` (or ``RuntimeError``) when the
        socket is closing or closed."""
        ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


Dial = Callable[[str, Mapping[str, str]], Awaitable[ClientSocket]]
"""Open a relay socket: ``(url, headers) -> ClientSocket``. Raises ``OSError``,
``aiohttp.ClientError`` or ``TimeoutError`` when the dial fails (the transport backs off)."""
