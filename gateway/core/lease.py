"""Who holds a claim: ``OWNER`` is this process as ``host:pid``; ``pid_alive`` tells whether
a recorded owner still runs. Cron runs and board tasks both record it, so a restart can tell a
claim that lapsed (its owner died) from one another live process still holds."""

from __future__ import annotations

import os
import socket

OWNER = f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(owner: str | None) -> bool:
    """Whether ``owner`` (``host:pid``) is a live process on this host. An owner on another
    host counts as alive (its lease decides); a missing or malformed owner as dead."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # another host: trust its lease
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def lapsed(owner: str | None, lease_until: float | None, now: float) -> bool:
    """A claim lapsed when its lease ran out (Unix seconds) or its owner is gone.

    Only asked at start-up, before this process claims anything: a claim recorded under this
    very ``host:pid`` belongs to an earlier process that had the same pid (a container
    restarts with the same small pid on the same host), so it has lapsed too.
    """
    if owner == OWNER:
        return True
    return (lease_until is not None and lease_until < now) or not pid_alive(owner)
