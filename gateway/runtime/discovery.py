"""The discovery file ``$HERMES_HOME/sidecar.json``: where management commands find a running
sidecar (host, port, pid and the admin bearer token), mode 0600, replaced atomically."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


class Discovery:
    """``write`` once the HTTP surface serves; ``remove`` at the end of shutdown (only the file
    this process wrote: a newer sidecar's file is left alone)."""

    def __init__(self, home: Path) -> None:
        self.path = home / "sidecar.json"
        self._written = False

    def write(self, *, host: str, port: int, token: str) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"port": port, "host": host, "pid": os.getpid(), "token": token}, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._written = True

    def remove(self) -> None:
        if not self._written:
            return
        self._written = False
        with contextlib.suppress(FileNotFoundError):
            data = json.loads(self.path.read_text())
            if data.get("pid") == os.getpid():
                self.path.unlink()
