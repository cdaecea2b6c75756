"""Start-up checks that must fail fast (SPEC 8.1): bind the listening socket before anything
else opens, and make sure a state folder exists, is private (0700) and writable.

Each raises ``StartupError`` with one line naming the cause; the CLI prints it and exits 1
within a second instead of leaving a half-started process behind.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from common.errors import StartupError


def bind_listener(host: str, port: int, what: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (port 0 picks a free one).

    ``what`` names the listener in the error (e.g. ``"sidecar HTTP"``). Raises ``StartupError``
    when the port is in use, the address cannot be bound, or the host does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise StartupError(f"{what}: cannot resolve host {host!r}: {exc}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"{what}: port {port} on {host} is already in use") from None
        raise StartupError(f"{what}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def prepare_home(path: Path, what: str = "HERMES_HOME") -> None:
    """Create ``path`` (mode 0700) if missing, tighten it to 0700 when this user owns it, and
    check it is a writable folder. Raises ``StartupError`` naming the folder and the cause."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"{what} {path} cannot be created: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise StartupError(f"{what} {path} is not a folder")
    try:
        if path.stat().st_uid == os.getuid():
            os.chmod(path, 0o700)
    except OSError as exc:
        raise StartupError(f"{what} {path} cannot be made private: {exc.strerror or exc}") from None
    probe = path / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"{what} {path} is not writable: {exc.strerror or exc}") from None
