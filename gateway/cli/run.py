"""``hermes-sidecar run``: start a sidecar, serve until SIGTERM/SIGINT, shut down gracefully;
a start that fails prints one stderr line and exits 1 (SPEC 8.1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

from gateway.config import load_config


def startup_failed(exc: BaseException, secrets: Iterable[str] = ()) -> int:
    """Print ``hermes-sidecar: error: <cause>`` as one stderr line (redacted of ``secrets``)
    and return the exit code 1. The cause is the message of a ``SidecarError`` (e.g.
    ``StartupError``), else ``<ExceptionType>: <message>``."""
    from common.errors import SidecarError
    from gateway.agent.redact import redact

    cause = str(exc) if isinstance(exc, SidecarError) else f"{type(exc).__name__}: {exc}"
    cause = " ".join(redact(cause, secrets).split()) or type(exc).__name__
    print(f"hermes-sidecar: error: {cause}", file=sys.stderr, flush=True)
    return 1


async def _run(
    host: str, port: int, env_overrides: dict[str, str] | None = None, *, metrics_port: int | None = None
) -> int:
    """``hermes-sidecar run``: 0 after a graceful stop, 1 (one stderr line) when start-up fails."""
    from gateway.runtime.sidecar import Sidecar

    env = {**os.environ, **(env_overrides or {})}
    try:
        config = load_config(env=env, strict=True)
        sidecar = Sidecar(config, host=host, port=port, env=env, metrics_port=metrics_port)
    except Exception as exc:  # a config file that cannot be used, or a sidecar that cannot be built
        return startup_failed(exc, _secrets(None, env))
    return await run_until_signal(sidecar)


def _secrets(config: Any, env: Any) -> list[str]:
    """Secret values to keep out of a start-up error line (best effort, never raises)."""
    from gateway.agent.redact import configured_secrets

    values = [env.get(k) for k in ("GATEWAY_RELAY_SECRET", "HERMES_WAKE_SECRET")] if env else []
    if config is not None:
        with contextlib.suppress(Exception):
            values += configured_secrets(config, env)
    return [v for v in values if v]


START_FAILED_SHUTDOWN_S = 3.0
"""How long a failed start may spend closing what it opened before the process exits."""


async def run_until_signal(sidecar: Any, on_started: Any = None) -> int:
    """Start ``sidecar``, serve until SIGTERM/SIGINT, shut down gracefully; return 0. SIGHUP
    re-reads the config (``sidecar.reload_config``).

    When ``sidecar.start()`` raises (a port in use, an unwritable home, ...): one line
    ``hermes-sidecar: error: <cause>`` on stderr, a best-effort ``shutdown()`` bounded by 3 s
    (every error suppressed), and 1 is returned; nothing is left serving.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, sidecar.request_stop)
    if hasattr(signal, "SIGHUP") and hasattr(sidecar, "reload_config"):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, sidecar.reload_config)
    try:
        await sidecar.start()
    except Exception as exc:
        code = startup_failed(exc, _secrets(getattr(sidecar, "config", None), getattr(sidecar, "env", None)))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sidecar.shutdown(), START_FAILED_SHUTDOWN_S)
        return code
    if on_started is not None:
        await on_started(sidecar)
    await sidecar.serve_forever()
    logging.getLogger("gateway.sidecar").info("signal received: shutting down")
    await sidecar.shutdown()
    return 0
